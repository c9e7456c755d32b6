//! A persistent pool of `cores - 1` threads: a call runs part 0 itself and
//! parts `1..` on the workers, which spin briefly for the next call (a
//! decode step makes dozens, microseconds apart) and then sleep.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

type Task = dyn Fn(usize) + Sync;

#[derive(Clone, Copy)]
struct TaskPtr(*const Task);

// SAFETY: the task is `Sync`, and `run` keeps it alive until every worker
// that was given it has finished.
unsafe impl Send for TaskPtr {}

struct State {
    epoch: u64,
    task: Option<TaskPtr>,
    parts: usize,
}

struct Pool {
    state: Mutex<State>,
    wake: Condvar,
    /// `State::epoch`, readable without the lock.
    epoch: AtomicU64,
    /// Worker parts of the current call not yet finished.
    pending: AtomicUsize,
    /// One call at a time.
    busy: Mutex<()>,
    workers: usize,
}

/// Spins before sleeping (about tens of microseconds).
const SPINS: u32 = 1 << 15;

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let p: &'static Pool = Box::leak(Box::new(Pool {
            workers: cores.clamp(1, 16) - 1,
            ..empty()
        }));
        for idx in 1..=p.workers {
            let spawned = std::thread::Builder::new()
                .name(format!("meshtrain-kernel-{idx}"))
                .spawn(move || work(p, idx));
            if spawned.is_err() {
                // Without its workers the pool runs every part itself.
                return Box::leak(Box::new(empty()));
            }
        }
        p
    })
}

fn empty() -> Pool {
    Pool {
        state: Mutex::new(State {
            epoch: 0,
            task: None,
            parts: 0,
        }),
        wake: Condvar::new(),
        epoch: AtomicU64::new(0),
        pending: AtomicUsize::new(0),
        busy: Mutex::new(()),
        workers: 0,
    }
}

/// How many parts a call can run at once.
pub(super) fn threads() -> usize {
    pool().workers + 1
}

/// Runs `task(p)` for `p` in `0..parts` (`parts <= threads()`), returning
/// when all have finished.
pub(super) fn run(parts: usize, task: &(dyn Fn(usize) + Sync + '_)) {
    let p = pool();
    let busy = p.busy.try_lock();
    if parts <= 1 || p.workers == 0 || busy.is_err() {
        (0..parts).for_each(task);
        return;
    }
    let parts = parts.min(p.workers + 1);
    // SAFETY: erases the lifetime; this function waits below until every
    // worker given the task has finished with it.
    let ptr = TaskPtr(unsafe {
        std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Task>(task)
    });
    {
        let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
        p.pending.store(parts - 1, Ordering::SeqCst);
        st.epoch += 1;
        st.task = Some(ptr);
        st.parts = parts;
        p.epoch.store(st.epoch, Ordering::Release);
    }
    p.wake.notify_all();
    // The workers hold the task until they finish: wait even on a panic.
    let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(0)));
    let mut spins = 0u32;
    while p.pending.load(Ordering::Acquire) != 0 {
        if spins < SPINS {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    p.state.lock().unwrap_or_else(|e| e.into_inner()).task = None;
    if let Err(e) = own {
        std::panic::resume_unwind(e);
    }
}

fn work(p: &'static Pool, idx: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        while p.epoch.load(Ordering::Acquire) == seen && spins < SPINS {
            spins += 1;
            std::hint::spin_loop();
        }
        let (task, parts) = {
            let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
            while st.epoch == seen {
                st = p.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            seen = st.epoch;
            (st.task, st.parts)
        };
        if let Some(t) = task
            && idx < parts
        {
            // SAFETY: `run` keeps the task alive until `pending` is zero,
            // which needs this part's decrement below.
            let f = unsafe { &*t.0 };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(idx))).is_err() {
                eprintln!("meshtrain: a decode kernel part panicked");
            }
            p.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
