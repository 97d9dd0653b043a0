//! Benchmarks of token validation (placeholder until the criterion suite lands).

fn main() {}
