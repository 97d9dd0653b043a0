//! `-o table|json|yaml`: every command builds a serialisable report and prints it as a table
//! for people or as JSON/YAML for programs (`apiVersion: cli.scopegate.dev/v1`, stable).

use serde::Serialize;

/// The `apiVersion` of machine-readable output.
pub const API_VERSION: &str = "cli.scopegate.dev/v1";

/// Output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// For people.
    #[default]
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// A report with its `apiVersion` and `kind`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, T: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// Prints `body` as JSON or YAML (for [`Format::Table`] the caller prints `table`).
pub fn print<T: Serialize>(
    format: Format,
    kind: &'static str,
    body: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let envelope = Envelope {
        api_version: API_VERSION,
        kind,
        body,
    };
    match format {
        Format::Table => emit(&table()),
        Format::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&envelope)?)),
        Format::Yaml => emit(&serde_yaml_ng::to_string(&envelope)?),
    }
}

/// Writes to stdout; a reader that went away (`| head`) ends the output quietly.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Aligns rows into columns separated by three spaces, kubectl style.
pub fn columns(rows: &[Vec<String>]) -> String {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; width];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A Unix time as RFC 3339, with how far it is from `now`.
pub fn when(unix: i64, now: i64) -> String {
    let at = k8s_openapi::jiff::Timestamp::from_second(unix)
        .map_or_else(|_| unix.to_string(), |t| t.to_string());
    let delta = unix - now;
    let ago = |d: i64| {
        let d = d.unsigned_abs();
        match d {
            0..120 => format!("{d}s"),
            120..7200 => format!("{}m", d / 60),
            7200..172_800 => format!("{}h", d / 3600),
            _ => format!("{}d", d / 86_400),
        }
    };
    if delta >= 0 {
        format!("{at} (in {})", ago(delta))
    } else {
        format!("{at} ({} ago)", ago(delta))
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
