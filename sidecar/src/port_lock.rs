//! The inbound port lock: nftables rules in the pod's network namespace that refuse inbound
//! connections to every port but the sidecar's, for clusters whose network plugin does not
//! enforce NetworkPolicy. Run once, by the injected init container
//! (`scopegate-sidecar port-lock --allow <port>...`), before the app and the sidecar start.
//!
//! The rules go to the kernel as one nf_tables netlink batch (the messages `nft` itself
//! sends), so the image needs no `nft` binary and the container only `CAP_NET_ADMIN`. The
//! table `inet scopegate`, chain `inbound` (hook input, priority filter, policy accept):
//!
//! ```text
//! iif "lo" accept                                 # the sidecar reaching the app, any local use
//! tcp dport <each allowed port> accept            # the sidecar's listener, its admin port
//! meta l4proto tcp ct state new reject with tcp reset
//! ct state new reject with icmpx port-unreachable
//! ```
//!
//! Replies to the pod's own connections (`ct state established,related`) pass; a connection
//! to any other port is refused at once (a TCP reset), not left to time out. The batch first
//! creates, deletes and re-creates the table, so running it again (an init container retried
//! in the same sandbox) leaves one copy of the rules.

use std::io::{Read, Write};
use std::time::Duration;

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum PortLockError {
    /// The netlink socket could not be opened or used.
    #[error("nf_tables netlink socket")]
    Socket(#[from] std::io::Error),
    /// The kernel refused a message of the batch (e.g. EPERM without CAP_NET_ADMIN).
    #[error("the kernel refused the port-lock rules: {0}")]
    Refused(std::io::Error),
    /// The kernel did not acknowledge every message.
    #[error("the kernel acknowledged {0} of {1} messages")]
    Incomplete(usize, usize),
    /// No port to allow: the lock would refuse the sidecar's own traffic.
    #[error("no port to allow")]
    NoPorts,
}

/// Name of the nftables table the lock installs.
pub const TABLE: &str = "scopegate";
/// Name of its chain.
pub const CHAIN: &str = "inbound";

const NETLINK_NETFILTER: i32 = 12;
const AF_NETLINK: i32 = 16;
const SOCK_RAW: i32 = 3;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_INET: u8 = 1;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_ACCEPT: u32 = 1;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_META_IIF: u32 = 4;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_REJECT_TCP_RST: u32 = 1;
const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
const NFT_REJECT_ICMPX_PORT_UNREACH: u8 = 1;
/// `ct state new`: bit `IP_CT_NEW + 1`.
const CT_STATE_NEW: u32 = 1 << 3;
const IPPROTO_TCP: u8 = 6;
/// The loopback interface's index, 1 in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// A netlink attribute: a leaf value or nested attributes.
enum Attr {
    Bytes(u16, Vec<u8>),
    Nested(u16, Vec<Attr>),
}

fn string(kind: u16, text: &str) -> Attr {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    Attr::Bytes(kind, bytes)
}

/// A 32-bit attribute, in network byte order as nf_tables reads them.
fn be32(kind: u16, value: u32) -> Attr {
    Attr::Bytes(kind, value.to_be_bytes().to_vec())
}

impl Attr {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let kind = match self {
            Attr::Bytes(kind, bytes) => {
                out.extend_from_slice(bytes);
                *kind
            }
            Attr::Nested(kind, children) => {
                for child in children {
                    child.encode(out);
                }
                kind | NLA_F_NESTED
            }
        };
        let len = u16::try_from(out.len() - start).unwrap_or(u16::MAX);
        out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        out[start + 2..start + 4].copy_from_slice(&kind.to_ne_bytes());
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
}

/// One expression of a rule: its name and its attributes.
fn expr(name: &str, data: Vec<Attr>) -> Attr {
    Attr::Nested(1, vec![string(1, name), Attr::Nested(2, data)])
}

fn meta(key: u32) -> Attr {
    expr("meta", vec![be32(2, key), be32(1, NFT_REG_1)])
}

fn cmp(op: u32, value: &[u8]) -> Attr {
    expr(
        "cmp",
        vec![
            be32(1, NFT_REG_1),
            be32(2, op),
            Attr::Nested(3, vec![Attr::Bytes(1, value.to_vec())]),
        ],
    )
}

fn tcp_dport() -> Attr {
    expr(
        "payload",
        vec![
            be32(1, NFT_REG_1),
            be32(2, NFT_PAYLOAD_TRANSPORT_HEADER),
            be32(3, 2),
            be32(4, 2),
        ],
    )
}

/// `ct state new`, leaving the register non-zero for a new connection.
fn ct_state_new() -> Vec<Attr> {
    vec![
        expr("ct", vec![be32(1, NFT_REG_1), be32(2, NFT_CT_STATE)]),
        expr(
            "bitwise",
            vec![
                be32(1, NFT_REG_1),
                be32(2, NFT_REG_1),
                be32(3, 4),
                Attr::Nested(4, vec![Attr::Bytes(1, CT_STATE_NEW.to_ne_bytes().to_vec())]),
                Attr::Nested(5, vec![Attr::Bytes(1, 0u32.to_ne_bytes().to_vec())]),
            ],
        ),
        cmp(NFT_CMP_NEQ, &0u32.to_ne_bytes()),
    ]
}

fn accept() -> Attr {
    expr(
        "immediate",
        vec![
            be32(1, NFT_REG_VERDICT),
            Attr::Nested(2, vec![Attr::Nested(2, vec![be32(1, NF_ACCEPT)])]),
        ],
    )
}

/// The rules of the chain, in order, as expression lists.
fn rules(allowed: &[u16]) -> Vec<Vec<Attr>> {
    let mut rules = vec![vec![
        meta(NFT_META_IIF),
        cmp(NFT_CMP_EQ, &LOOPBACK_IFINDEX.to_ne_bytes()),
        accept(),
    ]];
    for port in allowed {
        rules.push(vec![
            meta(NFT_META_L4PROTO),
            cmp(NFT_CMP_EQ, &[IPPROTO_TCP]),
            tcp_dport(),
            cmp(NFT_CMP_EQ, &port.to_be_bytes()),
            accept(),
        ]);
    }
    let mut tcp = vec![meta(NFT_META_L4PROTO), cmp(NFT_CMP_EQ, &[IPPROTO_TCP])];
    tcp.extend(ct_state_new());
    tcp.push(expr("reject", vec![be32(1, NFT_REJECT_TCP_RST)]));
    rules.push(tcp);
    let mut other = ct_state_new();
    other.push(expr(
        "reject",
        vec![
            be32(1, NFT_REJECT_ICMPX_UNREACH),
            Attr::Bytes(2, vec![NFT_REJECT_ICMPX_PORT_UNREACH]),
        ],
    ));
    rules.push(other);
    rules
}

/// One netlink message: header, nfgenmsg, attributes.
fn message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[Attr],
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    for attr in attrs {
        attr.encode(out);
    }
    let len = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// The whole batch that installs the lock for `allowed` TCP ports, with sequence numbers from
/// `first_seq`, and how many of its messages ask for an acknowledgement. Pure.
pub fn batch(allowed: &[u16], first_seq: u32) -> (Vec<u8>, usize) {
    let mut batch = Batch {
        out: Vec::new(),
        seq: first_seq,
        acked: 0,
    };
    let table = [string(1, TABLE)];
    batch.delimiter(NFNL_MSG_BATCH_BEGIN);
    // Create, delete and create again: whatever an earlier run left is replaced whole.
    batch.command(NFT_MSG_NEWTABLE, NLM_F_CREATE, &table);
    batch.command(NFT_MSG_DELTABLE, 0, &table);
    batch.command(NFT_MSG_NEWTABLE, NLM_F_CREATE, &table);
    let chain = [
        string(1, TABLE),
        string(3, CHAIN),
        Attr::Nested(4, vec![be32(1, NF_INET_LOCAL_IN), be32(2, 0)]),
        be32(5, NF_ACCEPT),
        string(7, "filter"),
    ];
    batch.command(NFT_MSG_NEWCHAIN, NLM_F_CREATE, &chain);
    for expressions in rules(allowed) {
        let rule = [
            string(1, TABLE),
            string(2, CHAIN),
            Attr::Nested(4, expressions),
        ];
        batch.command(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, &rule);
    }
    batch.delimiter(NFNL_MSG_BATCH_END);
    (batch.out, batch.acked)
}

/// A netlink batch being written: its bytes, the last sequence number used, and how many of
/// its messages ask for an acknowledgement.
struct Batch {
    out: Vec<u8>,
    seq: u32,
    acked: usize,
}

impl Batch {
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The batch's begin or end marker; not acknowledged.
    fn delimiter(&mut self, kind: u16) {
        let seq = self.next_seq();
        message(
            &mut self.out,
            kind,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
    }

    /// An nftables command in the inet family, acknowledged.
    fn command(&mut self, command: u16, flags: u16, attrs: &[Attr]) {
        let seq = self.next_seq();
        message(
            &mut self.out,
            (NFNL_SUBSYS_NFTABLES << 8) | command,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            NFPROTO_INET,
            0,
            attrs,
        );
        self.acked += 1;
    }
}

/// Installs the lock in the current network namespace, allowing inbound TCP connections to
/// `allowed` only. Needs CAP_NET_ADMIN there.
pub fn install(allowed: &[u16]) -> Result<(), PortLockError> {
    if allowed.is_empty() {
        return Err(PortLockError::NoPorts);
    }
    let mut socket = socket2::Socket::new(
        socket2::Domain::from(AF_NETLINK),
        socket2::Type::from(SOCK_RAW),
        Some(socket2::Protocol::from(NETLINK_NETFILTER)),
    )?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (batch, expected) = batch(allowed, 0);
    socket.write_all(&batch)?;
    let mut acked = 0;
    let mut buffer = vec![0u8; 64 * 1024];
    while acked < expected {
        let read = match socket.read(&mut buffer) {
            Ok(read) => read,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(PortLockError::Incomplete(acked, expected));
            }
            Err(err) => return Err(err.into()),
        };
        let mut rest = &buffer[..read];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < 16 || len > rest.len() {
                break;
            }
            if kind == NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]);
                if code != 0 {
                    return Err(PortLockError::Refused(std::io::Error::from_raw_os_error(
                        -code,
                    )));
                }
                acked += 1;
            }
            let aligned = (len + 3) & !3;
            rest = &rest[aligned.min(rest.len())..];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a batch into (type, flags, payload) per message.
    fn messages(bytes: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            assert!(
                len >= 20 && len.is_multiple_of(4) && len <= rest.len(),
                "{len}"
            );
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            let flags = u16::from_ne_bytes(rest[6..8].try_into().unwrap());
            out.push((kind, flags, rest[20..len].to_vec()));
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn the_batch_recreates_the_table_and_appends_one_rule_per_port_and_the_refusals() {
        let (bytes, acked) = batch(&[15080, 15090], 7);
        let all = messages(&bytes);
        let kinds: Vec<u16> = all.iter().map(|m| m.0).collect();
        let nft = |c: u16| (10 << 8) | c;
        assert_eq!(
            kinds,
            [
                16,
                nft(0),
                nft(2),
                nft(0),
                nft(3),
                nft(6),
                nft(6),
                nft(6),
                nft(6),
                nft(6),
                17
            ]
        );
        assert_eq!(acked, all.iter().filter(|m| m.1 & NLM_F_ACK != 0).count());
        assert_eq!(acked, 9);
        // Each allowed port appears in network byte order in its own rule, after a
        // transport-header payload load.
        let rule_of = |port: u16| {
            all.iter()
                .filter(|m| m.0 == nft(6))
                .filter(|m| {
                    m.2.windows(2).any(|w| w == port.to_be_bytes())
                        && m.2.windows(8).any(|w| w == b"payload\0")
                })
                .count()
        };
        assert_eq!(rule_of(15080), 1);
        assert_eq!(rule_of(15090), 1);
        assert_eq!(rule_of(8080), 0, "the app's port is never allowed");
        let rejects = all
            .iter()
            .filter(|m| m.2.windows(7).any(|w| w == b"reject\0"))
            .count();
        assert_eq!(rejects, 2);
        // Nested attributes carry NLA_F_NESTED; the chain hooks input.
        let chain = &all[4].2;
        assert!(chain.windows(7).any(|w| w == b"filter\0"));
    }

    #[test]
    fn without_a_port_nothing_is_installed() {
        assert!(matches!(install(&[]), Err(PortLockError::NoPorts)));
    }
}
