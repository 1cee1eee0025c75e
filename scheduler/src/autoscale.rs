//! Autoscaling, after Knative's KPA, as a pure function of the load seen over time: enough
//! replicas that each has `targetConcurrency` requests in flight, averaged over a stable
//! window; when the load over the panic window calls for at least twice the replicas
//! there are, scale up at once and do not scale down until the load has stayed below that
//! for a whole stable window; scale down only to the most replicas wanted over the last
//! `scaleDownDelay`, and only after watching for that long (so a scheduler that just took
//! over, with no history, keeps the count it finds).
//!
//! With `min: 0` an app that has had no request for `scaleDownDelay` (and was not woken in
//! it) goes to zero; otherwise it keeps at least one replica.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shoal_lattice::records::{Autoscale, AutoscaleStatus};

/// Samples closer together than this are one.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The load one app has had, as this scheduler saw it.
#[derive(Debug, Default)]
pub struct Window {
    /// (when, requests in flight in thousandths).
    samples: VecDeque<(Instant, u64)>,
    /// (when, replicas wanted then).
    wanted: VecDeque<(Instant, u32)>,
    /// When this scheduler started watching.
    since: Option<Instant>,
    /// Until when it scales on the panic window.
    panicking_until: Option<Instant>,
    /// When it last saw any load.
    last_busy: Option<Instant>,
    /// When a host last asked to wake the app.
    woken: Option<Instant>,
}

/// What the window calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What it saw and wants, for the app's status.
    pub status: AutoscaleStatus,
    /// The count to scale to, when it differs from the current one.
    pub scale_to: Option<u32>,
    /// Why, for the event: `230 in flight over 60s, target 50`.
    pub reason: String,
}

fn mean(samples: impl Iterator<Item = u64>) -> u64 {
    let (sum, count) = samples.fold((0u64, 0u64), |(sum, count), sample| {
        (sum.saturating_add(sample), count + 1)
    });
    sum.checked_div(count).unwrap_or(0)
}

/// Replicas for `milli` thousandths of requests in flight at `target` each, within bounds
/// and at least one: only [`Window::idle`] takes an app to zero.
fn replicas_for(milli: u64, spec: &Autoscale) -> u32 {
    let per_replica = u64::from(spec.target()).saturating_mul(1000).max(1);
    let wanted = u32::try_from(milli.div_ceil(per_replica)).unwrap_or(u32::MAX);
    let floor = spec.min().max(1);
    wanted.clamp(floor, spec.max().max(floor))
}

impl Window {
    /// Records the app's total load at `now`.
    pub fn observe(&mut self, now: Instant, milli: u64) {
        self.since.get_or_insert(now);
        if milli > 0 {
            self.last_busy = Some(now);
        }
        if self
            .samples
            .back()
            .is_some_and(|(at, _)| now.duration_since(*at) < SAMPLE_EVERY)
        {
            return;
        }
        self.samples.push_back((now, milli));
    }

    /// A host holds a request for the app: it must not go to zero for `scaleDownDelay`.
    pub fn woken(&mut self, now: Instant) {
        self.since.get_or_insert(now);
        self.woken = Some(now);
    }

    /// Whether an app that may scale to zero should: watched for `delay`, with no load and
    /// no wake in it.
    fn idle(&self, spec: &Autoscale, now: Instant) -> bool {
        let delay = spec.scale_down_delay();
        let quiet_since = |at: Option<Instant>| at.is_none_or(|at| now.duration_since(at) >= delay);
        spec.min() == 0
            && self
                .since
                .is_some_and(|since| now.duration_since(since) >= delay)
            && quiet_since(self.last_busy)
            && quiet_since(self.woken)
    }

    /// The replica count the load calls for, given `current`.
    pub fn decide(&mut self, spec: &Autoscale, current: u32, now: Instant) -> Decision {
        let window = spec.window();
        let panic_window = spec.panic_window();
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > window)
        {
            self.samples.pop_front();
        }
        let recent = |span: Duration| {
            self.samples
                .iter()
                .filter(move |(at, _)| now.duration_since(*at) <= span)
                .map(|(_, milli)| *milli)
        };
        let stable_milli = mean(recent(window));
        let panic_milli = mean(recent(panic_window));
        let stable = replicas_for(stable_milli, spec);
        let panic = replicas_for(panic_milli, spec);
        if panic > current && panic >= current.saturating_mul(2) {
            self.panicking_until = Some(now + window);
        }
        let panicking = self.panicking_until.is_some_and(|until| now < until);
        let wanted = if panicking {
            current.max(panic).max(stable)
        } else {
            stable
        };
        let delay = spec.scale_down_delay();
        self.wanted.push_back((now, wanted));
        while self
            .wanted
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > delay)
        {
            self.wanted.pop_front();
        }
        let watched = self
            .since
            .is_some_and(|since| now.duration_since(since) >= delay.max(window));
        let target = if self.idle(spec, now) {
            0
        } else if wanted >= current {
            wanted
        } else if watched {
            // The most wanted over the delay: a dip shorter than it removes nothing.
            self.wanted
                .iter()
                .map(|(_, wanted)| *wanted)
                .max()
                .unwrap_or(wanted)
                .min(current)
        } else {
            current
        };
        let (milli, over) = if panicking {
            (panic_milli, panic_window)
        } else {
            (stable_milli, window)
        };
        if target == 0 {
            return Decision {
                status: AutoscaleStatus {
                    panicking,
                    wanted: 0,
                },
                scale_to: (current != 0).then_some(0),
                reason: format!(
                    "no request for {}",
                    humantime::format_duration(spec.scale_down_delay())
                ),
            };
        }
        Decision {
            status: AutoscaleStatus { panicking, wanted },
            scale_to: (target != current).then_some(target),
            reason: format!(
                "{}.{} in flight over {}{}, target {} a replica",
                milli / 1000,
                (milli % 1000) / 100,
                humantime::format_duration(over),
                if panicking { " (panic)" } else { "" },
                spec.target()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_lattice::quantity::Span;

    fn spec() -> Autoscale {
        Autoscale {
            min: Some(1),
            max: Some(10),
            target_concurrency: Some(10),
            target_pending: None,
            window: Some(Span(Duration::from_secs(60))),
            scale_down_delay: Some(Span(Duration::from_secs(30))),
        }
    }

    /// Feeds `milli` every second for `seconds` from `start`, deciding each time; returns
    /// the count reached and when.
    fn run(
        window: &mut Window,
        spec: &Autoscale,
        mut current: u32,
        start: Instant,
        seconds: u64,
        milli: u64,
    ) -> (u32, Vec<(u64, u32)>) {
        let mut changes = Vec::new();
        for second in 0..seconds {
            let now = start + Duration::from_secs(second);
            window.observe(now, milli);
            if let Some(to) = window.decide(spec, current, now).scale_to {
                changes.push((second, to));
                current = to;
            }
        }
        (current, changes)
    }

    #[test]
    fn a_load_four_times_the_target_panics_up_at_once_and_goes_down_after_the_delay() {
        let spec = spec();
        let mut window = Window::default();
        let start = Instant::now();
        // A quiet minute: nothing changes.
        let (current, changes) = run(&mut window, &spec, 1, start, 60, 2_000);
        assert_eq!((current, changes), (1, vec![]));
        // 40 in flight at target 10: four replicas within the first seconds (panic).
        let (current, changes) = run(
            &mut window,
            &spec,
            1,
            start + Duration::from_secs(60),
            60,
            40_000,
        );
        assert_eq!(current, 4);
        assert!(changes[0].0 <= 1, "{changes:?}");
        // The load goes: still four for a while (panic, then the delay), then one.
        let (current, changes) = run(
            &mut window,
            &spec,
            4,
            start + Duration::from_secs(120),
            180,
            0,
        );
        assert_eq!(current, 1);
        let down_at = changes.last().unwrap().0;
        assert!(down_at >= 30, "scaled down after {down_at}s: {changes:?}");
    }

    #[test]
    fn min_zero_goes_to_zero_after_the_delay_without_requests_and_a_wake_keeps_one() {
        let spec = Autoscale {
            min: Some(0),
            ..spec()
        };
        let mut window = Window::default();
        let start = Instant::now();
        // Some load: one replica (never zero while requests come).
        let (current, _) = run(&mut window, &spec, 1, start, 40, 1);
        assert_eq!(current, 1);
        // Quiet: zero once the delay (30 s) has passed without a request.
        let (current, changes) = run(
            &mut window,
            &spec,
            1,
            start + Duration::from_secs(40),
            60,
            0,
        );
        assert_eq!(current, 0);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!((29..=31).contains(&changes[0].0), "{changes:?}");
        // At zero and quiet, it stays there.
        let at = start + Duration::from_secs(100);
        assert_eq!(window.decide(&spec, 0, at).scale_to, None);
        // A wake (the wake itself scales to one): one is kept for the delay, then zero.
        window.woken(at);
        let (current, changes) = run(&mut window, &spec, 1, at, 40, 0);
        assert_eq!(current, 0);
        assert!((29..=31).contains(&changes[0].0), "{changes:?}");
        // Load seen while at zero (a host's last report) brings one back.
        let later = at + Duration::from_secs(40);
        window.observe(later, 500);
        assert_eq!(window.decide(&spec, 0, later).scale_to, Some(1));
    }

    #[test]
    fn bounds_hold_and_a_new_watcher_keeps_the_count_it_finds() {
        let spec = spec();
        let mut window = Window::default();
        let start = Instant::now();
        // Far more than max: max.
        let (current, _) = run(&mut window, &spec, 3, start, 10, 1_000_000);
        assert_eq!(current, 10);
        // A scheduler that just took over with no load seen keeps 6 until it has watched
        // for the window, and never goes below min.
        let mut fresh = Window::default();
        let (current, changes) = run(&mut fresh, &spec, 6, start, 59, 0);
        assert_eq!((current, changes), (6, vec![]));
        let (current, _) = run(
            &mut fresh,
            &spec,
            6,
            start + Duration::from_secs(59),
            120,
            0,
        );
        assert_eq!(current, 1);
    }
}
