//! Phase timing of a CUDA run (`RunOptions::profile`): CUDA events around every launch of a
//! phase (lm-head GEMMs, stream kernels, gradient GEMMs, …), summed per phase when the caller
//! reads them. Off by default: then it records nothing and costs nothing.
//!
//! Invariant: events are recorded on the run's stream only; reading the times waits for them
//! (the host API does after its synchronisation; the device API only when asked).

use std::cell::RefCell;
use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaStream};

use crate::Error;
use crate::output::PhaseTime;

/// Marks of one run: `(phase, start, end)`.
pub(crate) type Marks = Vec<(&'static str, CudaEvent, CudaEvent)>;

/// Records events around phases when on.
pub(crate) struct Profiler<'s> {
    st: &'s Arc<CudaStream>,
    on: bool,
    marks: RefCell<Marks>,
}

impl<'s> Profiler<'s> {
    /// A profiler on `st`, recording only when `on`.
    pub fn new(st: &'s Arc<CudaStream>, on: bool) -> Self {
        Profiler {
            st,
            on,
            marks: RefCell::new(Vec::new()),
        }
    }

    fn event(&self) -> Result<CudaEvent, Error> {
        self.st
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(crate::cuda::drv("timing a phase"))
    }

    /// Runs `f` (which queues work on the stream) as part of `phase`.
    pub fn time<R>(
        &self,
        phase: &'static str,
        f: impl FnOnce() -> Result<R, Error>,
    ) -> Result<R, Error> {
        if !self.on {
            return f();
        }
        let a = self.event()?;
        let r = f()?;
        let b = self.event()?;
        self.marks.borrow_mut().push((phase, a, b));
        Ok(r)
    }

    /// The marks recorded.
    pub fn into_marks(self) -> Marks {
        self.marks.into_inner()
    }
}

/// Device time per phase, in first-seen order (waits for the events).
pub(crate) fn summarize(marks: &Marks) -> Result<Vec<PhaseTime>, Error> {
    let mut out: Vec<PhaseTime> = Vec::new();
    for (phase, a, b) in marks {
        let ms = f64::from(
            a.elapsed_ms(b)
                .map_err(crate::cuda::drv("timing a phase"))?,
        );
        match out.iter_mut().find(|p| p.phase == *phase) {
            Some(p) => {
                p.ms += ms;
                p.launches += 1;
            }
            None => out.push(PhaseTime {
                phase: (*phase).to_string(),
                ms,
                launches: 1,
            }),
        }
    }
    Ok(out)
}
