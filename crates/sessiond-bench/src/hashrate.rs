//! What this machine can hash: the ceiling for login throughput.
//!
//! The same `argon2` crate (0.5) and the same parameters as the server (argon2id, m = 19,456
//! KiB, t = 2, p = 1), one thread per core, each hashing back to back until the time is up
//! into memory it allocated once (as the server's hashing threads do: a fresh 19 MiB per hash
//! costs page faults that are not argon2's work). A login costs exactly one such
//! computation (a verification recomputes the hash).

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, Version};

/// The server's parameters (`sessiond::password`), repeated here so the bench does not link
/// the server.
pub const M_KIB: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

#[derive(Clone, Debug)]
pub struct HashRate {
    /// Hashes per second, all threads together.
    pub per_second: f64,
    pub threads: usize,
    pub hashes: u64,
    pub seconds: f64,
}

/// Hashes on `threads` threads for about `duration` (each thread finishes at least one).
pub fn measure(threads: usize, duration: Duration) -> anyhow::Result<HashRate> {
    let threads = threads.max(1);
    let params = Params::new(M_KIB, T_COST, P_COST, Some(32))
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let start = Instant::now();
    let deadline = start + duration;
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let params = params.clone();
                s.spawn(move || -> anyhow::Result<(u64, Instant)> {
                    let mut blocks = vec![Block::default(); params.block_count()];
                    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                    let salt = [u8::try_from(t % 256).unwrap_or(0); 16];
                    let mut out = [0u8; 32];
                    let mut n = 0u64;
                    loop {
                        argon
                            .hash_password_into_with_memory(
                                b"correct horse battery staple",
                                &salt,
                                &mut out,
                                &mut blocks,
                            )
                            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
                        n += 1;
                        if Instant::now() >= deadline {
                            return Ok((n, Instant::now()));
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a hashing thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let hashes: u64 = counts.iter().map(|(n, _)| n).sum();
    let end = counts.iter().map(|(_, t)| *t).max().unwrap_or(deadline);
    let seconds = end.duration_since(start).as_secs_f64().max(1e-3);
    Ok(HashRate {
        per_second: hashes as f64 / seconds,
        threads,
        hashes,
        seconds,
    })
}
