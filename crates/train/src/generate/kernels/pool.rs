//! A persistent pool of `cores - 1` threads. A call splits its work into
//! chunks that the caller and the workers claim one at a time, so a
//! worker that is not scheduled soon (a busy machine) only leaves its
//! chunks to the caller instead of stalling it. Workers spin briefly for
//! the next call (a decode step makes dozens, microseconds apart), then
//! sleep.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

type Task = dyn Fn(usize) + Sync;

#[derive(Clone, Copy)]
struct TaskPtr(*const Task);

// SAFETY: the task is `Sync`, and `run` keeps it alive until every chunk
// claimed under its epoch has finished.
unsafe impl Send for TaskPtr {}

struct State {
    epoch: u64,
    task: Option<TaskPtr>,
}

struct Pool {
    state: Mutex<State>,
    wake: Condvar,
    /// The call's epoch (high 32 bits) and next unclaimed chunk (low 32):
    /// a chunk is claimed only under its own call's epoch.
    next: AtomicU64,
    /// The call's chunk count.
    chunks: AtomicUsize,
    /// Chunks of the call finished (or panicked).
    done: AtomicUsize,
    /// A chunk of the call panicked.
    failed: AtomicBool,
    /// One call at a time.
    busy: Mutex<()>,
    workers: usize,
}

/// Spins before sleeping (`pause` takes tens of cycles: about a millisecond).
const SPINS: u32 = 1 << 15;

/// Spins of a waiting worker before it yields between spins.
const EAGER_SPINS: u32 = 1 << 8;

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::env::var(super::THREADS_ENV)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let p: &'static Pool = Box::leak(Box::new(Pool {
            state: Mutex::new(State {
                epoch: 0,
                task: None,
            }),
            wake: Condvar::new(),
            next: AtomicU64::new(0),
            chunks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            busy: Mutex::new(()),
            workers: cores.clamp(1, 16) - 1,
        }));
        for idx in 1..=p.workers {
            // Without a worker the caller claims every chunk itself.
            let _ = std::thread::Builder::new()
                .name(format!("meshtrain-kernel-{idx}"))
                .spawn(move || work(p));
        }
        p
    })
}

/// How many threads share a call.
pub(super) fn threads() -> usize {
    pool().workers + 1
}

/// Claims and runs chunks of the call of `epoch` until none is left.
fn drain(p: &Pool, epoch: u64, task: &(dyn Fn(usize) + Sync + '_)) {
    let chunks = p.chunks.load(Ordering::Acquire) as u64;
    let mut cur = p.next.load(Ordering::Acquire);
    loop {
        if cur >> 32 != epoch & 0xffff_ffff || (cur & 0xffff_ffff) >= chunks {
            return;
        }
        match p
            .next
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                let c = (cur & 0xffff_ffff) as usize;
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(c)));
                if ran.is_err() {
                    p.failed.store(true, Ordering::Release);
                }
                p.done.fetch_add(1, Ordering::AcqRel);
                cur = p.next.load(Ordering::Acquire);
            }
            Err(now) => cur = now,
        }
    }
}

/// Runs `task(c)` for every chunk `c` in `0..chunks`, on the caller and
/// the workers, returning when all have finished.
pub(super) fn run(chunks: usize, task: &(dyn Fn(usize) + Sync + '_)) {
    let p = pool();
    let busy = p.busy.try_lock();
    if chunks <= 1 || p.workers == 0 || busy.is_err() {
        (0..chunks).for_each(task);
        return;
    }
    // SAFETY: erases the lifetime; this function returns only when every
    // chunk has finished (`drain` catches panics), and none can be claimed
    // after.
    let ptr = TaskPtr(unsafe {
        std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Task>(task)
    });
    let epoch = {
        let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
        st.epoch += 1;
        st.task = Some(ptr);
        p.chunks.store(chunks, Ordering::Release);
        p.done.store(0, Ordering::Release);
        p.failed.store(false, Ordering::Release);
        p.next
            .store((st.epoch & 0xffff_ffff) << 32, Ordering::Release);
        st.epoch
    };
    p.wake.notify_all();
    drain(p, epoch, task);
    let mut spins = 0u32;
    while p.done.load(Ordering::Acquire) < chunks {
        if spins < SPINS {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    p.state.lock().unwrap_or_else(|e| e.into_inner()).task = None;
    // Every chunk has finished: the task may go.
    assert!(
        !p.failed.load(Ordering::Acquire),
        "a decode kernel chunk panicked"
    );
}

fn work(p: &'static Pool) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        while p.next.load(Ordering::Acquire) >> 32 == seen & 0xffff_ffff && spins < SPINS {
            spins += 1;
            if spins < EAGER_SPINS {
                std::hint::spin_loop();
            } else {
                // Between calls XLA runs its own operations on its own
                // threads: give them the core rather than spin against them.
                std::thread::yield_now();
            }
        }
        let (epoch, task) = {
            let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
            while st.epoch == seen {
                st = p.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            (st.epoch, st.task)
        };
        seen = epoch;
        if let Some(t) = task {
            // SAFETY: `run` keeps the task alive until every chunk claimed
            // under `epoch` has finished; `drain` claims only under it.
            let f = unsafe { &*t.0 };
            drain(p, epoch, f);
        }
    }
}
