//! The balancer: its shared core (members, the ready list, the strategy),
//! its configuration and builder, and the handle applications hold.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use rsocket_core::{RequestError, Requester};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::clock::{Clock, Micros, Sampler, Time};
use crate::connect::Connect;
use crate::discovery::{self, Change};
use crate::member::{self, Backoff, Member, MemberInfo, MemberState, Picked, Slot, Slots, Start};
use crate::rng::Rng;
use crate::strategy::{Candidates, List, Strategy, View, WeightedP2c};
use crate::{CallOptions, Key};

/// Why the balancer could not place a request. Carried inside
/// [`RequestError::Unavailable`]; get it back with
/// [`BalanceError::of`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BalanceError {
    /// No member became ready within
    /// [`BalancerConfig::wait_for_member`].
    #[error("no member was ready within {waited:?} ({members} known, {targets} targets)")]
    NoReadyMember {
        /// How long the request waited.
        waited: Duration,
        /// Members known (connecting, ready or draining).
        members: usize,
        /// Keys in the target list.
        targets: usize,
    },
    /// The balancer was closed or dropped.
    #[error("the balancer is closed")]
    Closed,
}

impl BalanceError {
    /// The balancer's error inside a request error, if that is what it is.
    ///
    /// ```
    /// use rsocket_balance::BalanceError;
    /// let err: rsocket_core::RequestError = BalanceError::Closed.into();
    /// assert_eq!(BalanceError::of(&err), Some(&BalanceError::Closed));
    /// ```
    pub fn of(err: &RequestError) -> Option<&Self> {
        match err {
            RequestError::Unavailable(source) => source.downcast_ref::<Self>(),
            _ => None,
        }
    }
}

impl From<BalanceError> for RequestError {
    fn from(e: BalanceError) -> Self {
        Self::Unavailable(Arc::new(e))
    }
}

/// Tuning of a [`Balancer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BalancerConfig {
    /// How long a request waits for a ready member before failing with
    /// [`BalanceError::NoReadyMember`]. Default 5 s; `Duration::MAX` waits
    /// as long as it takes.
    pub wait_for_member: Duration,
    /// How many times a request is sent again when it is safe to (see
    /// the manual's [Retries](crate::manual#retries) section for which
    /// failures are). Default 2. A retry is a new pick among the ready
    /// members. A connection found closing or dead is taken out of use
    /// first, so the retry does not go to it; but a member that refused
    /// the request for want of a lease (`RequestError::NoLease`) stays in
    /// use and may be picked again: with a single ready member every
    /// attempt goes to it.
    pub max_retries: u32,
    /// Re-dial delays after a dial fails or a connection ends.
    pub backoff: Backoff,
    /// Request/responses a second above which only one in eight is timed
    /// (see the [manual](crate::manual#picking)). Default 50,000;
    /// `u32::MAX` times every request, as rsocket-java does.
    pub busy_rate: u32,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            wait_for_member: Duration::from_secs(5),
            max_retries: 2,
            backoff: Backoff::default(),
            busy_rate: 50_000,
        }
    }
}

/// What a wait for a member too long to be added to the clock becomes.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

struct State<K> {
    /// The members whose keys are in the target list.
    targets: HashMap<K, Arc<Member<K>>>,
    /// Every member not yet closed, in insertion order (draining ones too).
    all: Vec<Arc<Member<K>>>,
    /// The slots of the members requests may go to, in insertion order.
    ready: Vec<usize>,
    /// Every member's state, connection and statistics.
    slots: Slots<K>,
    strategy: Box<dyn Strategy>,
    rng: Rng,
    /// Which request/responses are timed.
    sampler: Sampler,
}

/// The ready members, as strategies see them.
struct Ready<'a, K> {
    ready: &'a [usize],
    slots: &'a Slots<K>,
}

/// Stands in for a slot that is gone (never the case while the lock is
/// held: a member leaves the ready list before its slot is freed).
struct Gone;

impl View for Gone {
    fn key(&self) -> &dyn std::fmt::Debug {
        &"(gone)"
    }

    fn weight(&self, _now: Micros) -> f64 {
        0.0
    }

    fn pending(&self) -> u32 {
        0
    }

    fn availability(&self) -> f64 {
        0.0
    }
}

impl<K: Key> List for Ready<'_, K> {
    fn len(&self) -> usize {
        self.ready.len()
    }

    fn view(&self, i: usize) -> &dyn View {
        match self.ready.get(i).and_then(|&slot| self.slots.at(slot)) {
            Some(slot) => slot,
            None => &Gone,
        }
    }
}

/// What [`Core::select`] found.
enum Selected {
    Begun(Picked),
    /// No member is ready.
    Nobody,
    /// The member picked is no longer ready: rebuild the list and retry.
    Stale,
}

pub(crate) struct Core<K> {
    state: Mutex<State<K>>,
    ready_notify: Notify,
    changes: watch::Sender<u64>,
    pub(crate) config: BalancerConfig,
    pub(crate) clock: Time,
    shutdown: CancellationToken,
    live_members: AtomicUsize,
}

impl<K: Key> Core<K> {
    fn lock(&self) -> MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(self: &Arc<Self>, key: K, connector: Arc<dyn Connect>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let member = {
            let mut st = self.lock();
            let seed = st.rng.next_u64();
            let (slot, id) = st.slots.insert(key.clone(), self.clock.now(), seed);
            let member = Arc::new(Member {
                key: key.clone(),
                removed: self.shutdown.child_token(),
                slot,
                id,
            });
            if let Some(old) = st.targets.insert(key.clone(), member.clone()) {
                debug!(?key, "target replaced: the old member drains");
                old.removed.cancel();
            } else {
                debug!(?key, "target added");
            }
            st.all.push(member.clone());
            member
        };
        self.live_members.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(member::run(self.clone(), member, connector));
        self.changed();
    }

    fn remove(&self, key: &K) {
        let old = self.lock().targets.remove(key);
        if let Some(old) = old {
            debug!(?key, "target removed: the member drains");
            old.removed.cancel();
            self.changed();
        }
    }

    /// Runs `f` on a member's entry under the lock, with the time; `None`
    /// once the member is forgotten.
    pub(crate) fn update<R>(
        &self,
        member: &Member<K>,
        f: impl FnOnce(&mut Slot<K>, Micros) -> R,
    ) -> Option<R> {
        let now = self.clock.now();
        self.lock().slots.of(member).map(|slot| f(slot, now))
    }

    /// A request/response `picked` has its answer (`ok`) or error: ends it
    /// on its member, at a reading of the clock if it was timed or failed.
    #[inline]
    pub(crate) fn end_request(&self, picked: &Picked, ok: bool) {
        let mut st = self.lock();
        let st = &mut *st;
        let now = st.sampler.end(&self.clock, picked.timed, ok);
        if let Some(slot) = st.slots.get_mut(picked.slot, picked.id) {
            slot.end_request(picked, now, ok);
        }
    }

    /// Runs `f` on the entry of the member a request was sent to, if it is
    /// still known.
    #[inline]
    pub(crate) fn on_picked<R>(
        &self,
        picked: &Picked,
        f: impl FnOnce(&mut Slot<K>) -> R,
    ) -> Option<R> {
        self.lock().slots.get_mut(picked.slot, picked.id).map(f)
    }

    /// A member's task has ended.
    pub(crate) fn forget(&self, member: &Arc<Member<K>>) {
        {
            let mut st = self.lock();
            st.all.retain(|m| !Arc::ptr_eq(m, member));
            if st
                .targets
                .get(&member.key)
                .is_some_and(|m| Arc::ptr_eq(m, member))
            {
                st.targets.remove(&member.key);
            }
            st.ready.retain(|&slot| slot != member.slot);
            st.slots.remove(member.slot, member.id);
        }
        self.live_members.fetch_sub(1, Ordering::SeqCst);
        self.changed();
    }

    /// Rebuilds the ready list after a state change and wakes waiters.
    pub(crate) fn changed(&self) {
        let ready = {
            let mut st = self.lock();
            let st = &mut *st;
            st.ready.clear();
            for m in &st.all {
                let is_target = st.targets.get(&m.key).is_some_and(|t| Arc::ptr_eq(t, m));
                if is_target
                    && st
                        .slots
                        .of(m)
                        .is_some_and(|s| s.inner().state == MemberState::Ready)
                {
                    st.ready.push(m.slot);
                }
            }
            debug!(
                ready = st.ready.len(),
                members = st.all.len(),
                targets = st.targets.len(),
                "balancer members"
            );
            st.ready.len()
        };
        if ready > 0 {
            self.ready_notify.notify_waiters();
        }
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Picks a ready member without waiting, counts `start` on it and
    /// opens the request with `open` (given the member's connection and
    /// where to record the end), all under one lock, so that the request is
    /// opened on the connection without cloning it. `open` comes back
    /// unused when no member is ready.
    #[inline]
    pub(crate) fn try_begin<R, F: FnOnce(&Requester, Picked) -> R>(
        &self,
        start: Start,
        open: F,
    ) -> Result<R, F> {
        // A member can have stopped being ready without the list knowing
        // yet (a refusal takes it out of use at once).
        for _ in 0..3 {
            let mut st = self.lock();
            match self.select(&mut st, start) {
                Selected::Begun(picked) => {
                    // `begin` checked the connection under this lock.
                    if let Some(requester) = st
                        .slots
                        .at_mut(picked.slot)
                        .and_then(|slot| slot.inner().requester())
                    {
                        return Ok(open(requester, picked));
                    }
                }
                Selected::Nobody => return Err(open),
                Selected::Stale => {}
            }
            drop(st);
            self.changed();
        }
        Err(open)
    }

    /// Asks the strategy for one of the (two or more) ready members: out of
    /// line, so that the one-member path stays small.
    #[inline(never)]
    fn choose(st: &mut State<K>, now: Micros) -> usize {
        let list = Ready {
            ready: &st.ready,
            slots: &st.slots,
        };
        let i = st
            .strategy
            .select(&Candidates::new(&list, now), &mut st.rng);
        st.ready.get(i).copied().unwrap_or(st.ready[0])
    }

    /// Picks a ready member and counts `start` on it.
    #[inline]
    fn select(&self, st: &mut State<K>, start: Start) -> Selected {
        if st.ready.is_empty() {
            return Selected::Nobody;
        }
        // A request/response's start time (when it is timed, a reading)
        // serves as the pick's.
        let (now, timed) = match start {
            Start::Request => st.sampler.start(&self.clock),
            _ => (0, false),
        };
        let slot = match st.ready.len() {
            // With one candidate the strategy is not consulted.
            1 => st.ready[0],
            _ => {
                let now = match start {
                    Start::Request => now,
                    _ => st.sampler.saw(self.clock.now()),
                };
                Self::choose(st, now)
            }
        };
        let Some(entry) = st.slots.at_mut(slot) else {
            return Selected::Stale;
        };
        let id = entry.id();
        match entry.inner().begin(start, now) {
            Some((generation, started)) => Selected::Begun(Picked {
                slot,
                id,
                generation,
                started,
                timed,
            }),
            None => Selected::Stale,
        }
    }

    /// Waits until some member is ready (then [`try_begin`](Self::try_begin)
    /// again), failing once `wait_for_member` has passed since `since`.
    pub(crate) async fn wait_ready(&self, since: tokio::time::Instant) -> Result<(), RequestError> {
        // A wait too long to add (`Duration::MAX`) is as good as forever.
        let deadline = since
            .checked_add(self.config.wait_for_member)
            .or_else(|| since.checked_add(FOREVER))
            .unwrap_or(since);
        loop {
            let mut notified = pin!(self.ready_notify.notified());
            notified.as_mut().enable();
            if !self.lock().ready.is_empty() {
                return Ok(());
            }
            if self.shutdown.is_cancelled() {
                return Err(BalanceError::Closed.into());
            }
            tokio::select! {
                () = notified => {}
                () = self.shutdown.cancelled() => return Err(BalanceError::Closed.into()),
                () = tokio::time::sleep_until(deadline) => {
                    let st = self.lock();
                    return Err(BalanceError::NoReadyMember {
                        waited: since.elapsed(),
                        members: st.all.len(),
                        targets: st.targets.len(),
                    }
                    .into());
                }
            }
        }
    }
}

/// What the application's handles share: the core, and the shutdown of
/// everything when the last handle goes (member tasks hold the core too).
/// One reference count per handle, so that cloning a [`Balancer`] costs
/// what cloning a `Requester` costs.
struct Handle<K> {
    core: Arc<Core<K>>,
}

impl<K> Drop for Handle<K> {
    fn drop(&mut self) {
        self.core.shutdown.cancel();
    }
}

/// Builds a [`Balancer`].
#[derive(Debug)]
pub struct BalancerBuilder {
    config: BalancerConfig,
    strategy: Box<dyn Strategy>,
    clock: Option<Arc<dyn Clock>>,
    seed: Option<u64>,
    defaults: CallOptions,
}

impl Default for BalancerBuilder {
    fn default() -> Self {
        Self {
            config: BalancerConfig::default(),
            strategy: Box::new(WeightedP2c::new()),
            clock: None,
            seed: None,
            defaults: CallOptions::default(),
        }
    }
}

impl BalancerBuilder {
    /// The strategy (default: [`WeightedP2c`]).
    #[must_use]
    pub fn strategy(mut self, strategy: impl Strategy) -> Self {
        self.strategy = Box::new(strategy);
        self
    }

    /// The clock for latency measurement (default: the CPU's time-stamp
    /// counter, see [`Clock`]). Inject [`TokioClock`](crate::TokioClock)
    /// when the balancer runs on a paused tokio clock, or a
    /// [`ManualClock`](crate::ManualClock) to move time by hand.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Seeds every random choice (member picks, back-off jitter, quantile
    /// estimates). The picks of [`WeightedP2c`] also depend on the
    /// latencies read from the [clock](Self::clock), so a run replays
    /// exactly when the clock is deterministic too:
    /// [`TokioClock`](crate::TokioClock) on a paused current-thread tokio
    /// runtime (as `weighted_p2c_starves_the_slow_server_exactly` in
    /// `tests/balance.rs` checks), or a [`ManualClock`](crate::ManualClock).
    /// The default clock reads real time, so with it the same seed can
    /// give different picks.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// All tuning at once.
    #[must_use]
    pub fn config(mut self, config: BalancerConfig) -> Self {
        self.config = config;
        self
    }

    /// See [`BalancerConfig::wait_for_member`].
    #[must_use]
    pub fn wait_for_member(mut self, wait: Duration) -> Self {
        self.config.wait_for_member = wait;
        self
    }

    /// See [`BalancerConfig::max_retries`].
    #[must_use]
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.max_retries = n;
        self
    }

    /// See [`BalancerConfig::busy_rate`].
    #[must_use]
    pub fn busy_rate(mut self, per_second: u32) -> Self {
        self.config.busy_rate = per_second;
        self
    }

    /// Re-dial delays between `min` and `max`.
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.backoff = Backoff { min, max };
        self
    }

    /// The options of calls made through the [`RSocket`](rsocket_core::RSocket)
    /// trait (see [`Balancer::with_options`]).
    #[must_use]
    pub fn call_options(mut self, options: CallOptions) -> Self {
        self.defaults = options;
        self
    }

    /// Starts the balancer on the current tokio runtime, following
    /// `targets`. The balancer keeps its members when the stream ends.
    pub fn build<K, C, S>(self, targets: S) -> Balancer<K>
    where
        K: Key,
        C: Connect,
        S: Stream<Item = Change<K, C>> + Send + 'static,
    {
        let rng = self.seed.map_or_else(Rng::from_entropy, Rng::seeded);
        let core = Arc::new(Core {
            state: Mutex::new(State {
                targets: HashMap::new(),
                all: Vec::new(),
                ready: Vec::new(),
                slots: Slots::new(),
                strategy: self.strategy,
                rng,
                sampler: Sampler::new(self.config.busy_rate),
            }),
            ready_notify: Notify::new(),
            changes: watch::channel(0).0,
            config: self.config,
            clock: self.clock.map_or_else(Time::counter, Time::injected),
            shutdown: CancellationToken::new(),
            live_members: AtomicUsize::new(0),
        });
        tokio::spawn(follow(core.clone(), targets));
        Balancer {
            handle: Arc::new(Handle { core }),
            defaults: self.defaults,
        }
    }

    /// [`build`](Self::build) over a fixed list.
    pub fn build_from_list<K, C, I>(self, targets: I) -> Balancer<K>
    where
        K: Key,
        C: Connect,
        I: IntoIterator<Item = (K, C)>,
        I::IntoIter: Send + 'static,
    {
        self.build(discovery::from_list(targets))
    }

    /// [`build`](Self::build) following a `watch` of target lists.
    pub fn build_from_watch<K, C>(self, targets: watch::Receiver<Vec<(K, C)>>) -> Balancer<K>
    where
        K: Key,
        C: Connect + Clone + Sync,
    {
        self.build(discovery::from_watch(targets))
    }
}

async fn follow<K, C, S>(core: Arc<Core<K>>, targets: S)
where
    K: Key,
    C: Connect,
    S: Stream<Item = Change<K, C>> + Send + 'static,
{
    let mut targets = pin!(targets);
    loop {
        let next = tokio::select! {
            next = targets.next() => next,
            () = core.shutdown.cancelled() => return,
        };
        match next {
            Some(Change::Insert(key, connector)) => core.insert(key, Arc::new(connector)),
            Some(Change::Remove(key)) => core.remove(&key),
            None => {
                debug!("target stream ended; members kept");
                return;
            }
        }
    }
}

/// One [`RSocket`](rsocket_core::RSocket) over many servers. Cheap to
/// clone; every clone shares the members. Dropping the last clone closes
/// every member gracefully, as [`close`](Self::close) does but without
/// waiting: streams still open then (they are not clones) run to their
/// end before the connections close.
pub struct Balancer<K: Key> {
    handle: Arc<Handle<K>>,
    pub(crate) defaults: CallOptions,
}

impl<K: Key> Clone for Balancer<K> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            defaults: self.defaults,
        }
    }
}

impl<K: Key> std::fmt::Debug for Balancer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.core().lock();
        f.debug_struct("Balancer")
            .field("targets", &st.targets.len())
            .field("ready", &st.ready.len())
            .field("strategy", &st.strategy)
            .finish_non_exhaustive()
    }
}

impl Balancer<()> {
    /// A builder (weighted p2c, the time-stamp counter's clock, random seed); the key type
    /// comes from the targets given to its `build` methods.
    pub fn builder() -> BalancerBuilder {
        BalancerBuilder::default()
    }
}

impl<K: Key> Balancer<K> {
    pub(crate) fn core(&self) -> &Arc<Core<K>> {
        &self.handle.core
    }

    /// A balancer with default settings following `targets`.
    pub fn new<C, S>(targets: S) -> Self
    where
        C: Connect,
        S: Stream<Item = Change<K, C>> + Send + 'static,
    {
        BalancerBuilder::default().build(targets)
    }

    /// A balancer with default settings over a fixed list.
    pub fn from_list<C, I>(targets: I) -> Self
    where
        C: Connect,
        I: IntoIterator<Item = (K, C)>,
        I::IntoIter: Send + 'static,
    {
        BalancerBuilder::default().build_from_list(targets)
    }

    /// A balancer with default settings following a `watch` of lists.
    pub fn from_watch<C>(targets: watch::Receiver<Vec<(K, C)>>) -> Self
    where
        C: Connect + Clone + Sync,
    {
        BalancerBuilder::default().build_from_watch(targets)
    }

    /// A handle on the same members whose calls through the
    /// [`RSocket`](rsocket_core::RSocket) trait use `options` (for
    /// example to hand an idempotent view to a generated client).
    #[must_use]
    pub fn with_options(&self, options: CallOptions) -> Self {
        Self {
            defaults: options,
            ..self.clone()
        }
    }

    /// [`with_options`](Self::with_options) with every call marked
    /// idempotent.
    #[must_use]
    pub fn idempotent(&self) -> Self {
        self.with_options(CallOptions::new().idempotent(true))
    }

    /// A snapshot of every member (draining ones included), in insertion
    /// order.
    pub fn members(&self) -> Vec<MemberInfo<K>> {
        let core = self.core();
        let mut st = core.lock();
        let st = &mut *st;
        st.all
            .iter()
            .filter_map(|m| {
                let is_target = st.targets.get(&m.key).is_some_and(|t| Arc::ptr_eq(t, m));
                let now = core.clock.now();
                st.slots.of(m).map(|slot| slot.info(now, is_target))
            })
            .collect()
    }

    /// How many members take traffic now.
    pub fn ready_count(&self) -> usize {
        self.core().lock().ready.len()
    }

    /// A counter bumped on every member change (added, state, removed):
    /// `wait_for` on it to react to changes without polling.
    pub fn state_changes(&self) -> watch::Receiver<u64> {
        self.core().changes.subscribe()
    }

    /// Waits until `pred` holds for the member snapshot, re-checking on
    /// every change.
    pub async fn wait_until(&self, mut pred: impl FnMut(&[MemberInfo<K>]) -> bool) {
        let mut rx = self.state_changes();
        loop {
            rx.borrow_and_update();
            if pred(&self.members()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Closes every member gracefully (in-flight requests and streams
    /// finish) and waits until all are closed. Later requests fail with
    /// [`BalanceError::Closed`].
    pub async fn close(&self) {
        self.core().shutdown.cancel();
        let mut rx = self.state_changes();
        while self.core().live_members.load(Ordering::SeqCst) > 0 {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
