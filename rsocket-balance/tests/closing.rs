//! When the balancer consults its strategy: not with one ready member.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{count, text, within, MemServer};
use rsocket_balance::{Balancer, Candidates, MemberState, Rng, Strategy, TokioClock};
use rsocket_core::{Payload, RSocket};

/// Counts its calls; picks `pick` (which may be out of range).
#[derive(Debug)]
struct Counting {
    calls: Arc<AtomicUsize>,
    pick: usize,
}

impl Strategy for Counting {
    fn select(&mut self, _candidates: &Candidates<'_>, _rng: &mut Rng) -> usize {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.pick
    }
}

async fn counted_requests(servers: &[MemServer], pick: usize) -> (usize, Vec<String>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let balancer = Balancer::builder()
        .clock(TokioClock)
        .strategy(Counting {
            calls: calls.clone(),
            pick,
        })
        .build_from_list(common::targets(servers));
    within(
        "all ready",
        balancer.wait_until(|m| count(m, MemberState::Ready) == servers.len()),
    )
    .await;
    let mut replies = Vec::new();
    for _ in 0..10 {
        let reply = balancer.request_response(Payload::from("x")).await;
        replies.push(text(reply.unwrap()));
    }
    (calls.load(Ordering::SeqCst), replies)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_strategy_is_skipped_with_one_ready_member_and_asked_with_two() {
    let one = [MemServer::start("a", Duration::ZERO)];
    let (calls, replies) = counted_requests(&one, 0).await;
    assert_eq!(calls, 0, "one ready member: used without asking");
    assert!(replies.iter().all(|r| r == "a"), "{replies:?}");

    let two = [
        MemServer::start("a", Duration::ZERO),
        MemServer::start("b", Duration::ZERO),
    ];
    let (calls, replies) = counted_requests(&two, 1).await;
    assert_eq!(calls, 10, "two ready members: asked once per request");
    assert!(replies.iter().all(|r| r == "b"), "{replies:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_index_out_of_range_picks_the_first_candidate() {
    let servers = [
        MemServer::start("a", Duration::ZERO),
        MemServer::start("b", Duration::ZERO),
        MemServer::start("c", Duration::ZERO),
    ];
    for pick in [3, usize::MAX] {
        let (calls, replies) = counted_requests(&servers, pick).await;
        assert_eq!(calls, 10);
        assert!(replies.iter().all(|r| r == "a"), "{pick}: {replies:?}");
    }
}
