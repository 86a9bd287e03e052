//! The library's CPU thread pool. Its size is set by [`set_num_threads`] or the `GPTQ_NUM_THREADS`
//! environment variable, defaulting to the machine's cores. It is separate from rayon's global pool so
//! the library never resizes a pool the host application owns.

use crate::error::{Error, Result};
use once_cell::sync::Lazy;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, RwLock};

/// Environment variable read once, when the pool is first used.
pub const NUM_THREADS_ENV: &str = "GPTQ_NUM_THREADS";

static POOL: Lazy<RwLock<Arc<ThreadPool>>> = Lazy::new(|| {
    let n = std::env::var(NUM_THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    // Building a pool only fails when the OS refuses threads; fall back to one thread then.
    let pool = build(n).or_else(|_| build(1)).expect("cannot start even one worker thread");
    RwLock::new(Arc::new(pool))
});

fn build(n: usize) -> Result<ThreadPool> {
    let n = if n == 0 { default_threads() } else { n };
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("gptq-worker-{i}"))
        .build()
        .map_err(|e| Error::OutOfMemory(format!("cannot start {n} worker threads: {e}")))
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn current() -> Arc<ThreadPool> {
    // A poisoned lock only means a panic happened while swapping pools; the Arc inside is still valid.
    POOL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Replaces the pool with one of `n` threads (`0` = number of cores). Calls already running keep the
/// pool they started on.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n > 4096 {
        return Err(Error::InvalidArgument(format!("num_threads {n} is larger than 4096")));
    }
    let pool = Arc::new(build(n)?);
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = pool;
    Ok(())
}

/// Number of threads in the current pool.
pub fn num_threads() -> usize {
    current().current_num_threads()
}

/// Runs `f` inside the library pool: rayon and faer parallelism in `f` uses its threads.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    current().install(f)
}

/// The faer parallelism setting matching the current pool (call inside [`install`]).
pub fn faer_par() -> faer::Par {
    let n = rayon::current_num_threads();
    if n <= 1 { faer::Par::Seq } else { faer::Par::rayon(n) }
}
