"""Token buckets and the rate limiter, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import pytest

from llmjobs.simulator.buckets import RateLimiter, TokenBucket, rfc3339


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_capacity_equals_the_per_minute_limit_by_default(clock):
    bucket = TokenBucket(60, clock=clock)
    assert bucket.capacity == 60
    assert bucket.rate == 1.0
    assert bucket.remaining() == 60


def test_burst_sets_the_capacity_in_seconds_of_refill(clock):
    bucket = TokenBucket(60, burst=6, clock=clock)
    assert bucket.capacity == 6
    assert sum(bucket.try_acquire(1) for _ in range(10)) == 6


def test_refill_is_continuous_not_a_fixed_window(clock):
    bucket = TokenBucket(60, clock=clock)  # one per second
    assert all(bucket.try_acquire(1) for _ in range(60))
    assert not bucket.try_acquire(1)
    clock.advance(0.5)
    assert not bucket.try_acquire(1)
    assert bucket.level == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.try_acquire(1)  # a fixed window would wait for the minute to end
    clock.advance(10)
    assert bucket.remaining() == 10


def test_refill_never_exceeds_capacity(clock):
    bucket = TokenBucket(120, clock=clock)
    bucket.consume(30)
    clock.advance(3600)
    assert bucket.level == 120
    bucket.refund(50)
    assert bucket.level == 120


def test_wait_time_and_time_to_full(clock):
    bucket = TokenBucket(600, clock=clock)  # 10 per second
    bucket.consume(600)
    assert bucket.wait_time(25) == pytest.approx(2.5)
    assert bucket.time_to_full() == pytest.approx(60)
    clock.advance(2.5)
    assert bucket.wait_time(25) == 0
    assert bucket.try_acquire(25)


def test_amount_larger_than_capacity_waits_for_a_full_bucket_then_goes_into_debt(clock):
    bucket = TokenBucket(100, clock=clock)
    bucket.consume(10)
    assert bucket.wait_time(1000) == pytest.approx(10 / (100 / 60))
    clock.advance(6)
    assert bucket.try_acquire(1000)
    assert bucket.level == pytest.approx(-900)
    assert bucket.remaining() == 0


def test_invalid_limits_are_rejected(clock):
    with pytest.raises(ValueError):
        TokenBucket(0, clock=clock)
    with pytest.raises(ValueError):
        TokenBucket(10, burst=0, clock=clock)


def test_unlimited_limiter_admits_everything_and_sends_no_headers(clock):
    limiter = RateLimiter(clock=clock)
    assert not limiter.enabled
    assert all(limiter.admit(10**6, 10**6).ok for _ in range(100))
    assert limiter.headers() == []


def test_rpm_retry_after_is_the_exact_wait_rounded_up(clock):
    limiter = RateLimiter(rpm=3, clock=clock)  # one request per 20 s
    assert all(limiter.admit(0, 1).ok for _ in range(3))
    denied = limiter.admit(0, 1)
    assert not denied.ok
    assert denied.limited_by == "requests"
    assert denied.retry_after == pytest.approx(20)
    assert denied.retry_after_header == 20
    clock.advance(19.2)
    denied = limiter.admit(0, 1)
    assert denied.retry_after == pytest.approx(0.8)
    assert denied.retry_after_header == 1  # ceil, at least 1
    clock.advance(0.8)
    assert limiter.admit(0, 1).ok


def test_itpm_counts_input_tokens_and_reports_its_wait(clock):
    limiter = RateLimiter(itpm=600, clock=clock)  # 10 tokens per second
    assert limiter.admit(590, 1).ok
    denied = limiter.admit(35, 1)
    assert not denied.ok and denied.limited_by == "input_tokens"
    assert denied.retry_after == pytest.approx(2.5)
    assert denied.retry_after_header == 3


def test_otpm_reserves_max_tokens_then_refunds_the_difference(clock):
    limiter = RateLimiter(otpm=1000, clock=clock)
    admission = limiter.admit(0, 800)
    assert admission.ok and admission.output_reserved == 800
    assert limiter.output_tokens.remaining() == 200
    assert not limiter.admit(0, 800).ok  # the reservation blocks a second big request
    limiter.settle(admission.output_reserved, 100)
    assert limiter.output_tokens.remaining() == 900
    assert limiter.admit(0, 800).ok


def test_otpm_reservation_is_capped_at_the_capacity_and_overruns_are_charged(clock):
    limiter = RateLimiter(otpm=1000, clock=clock)
    admission = limiter.admit(0, 50_000)
    assert admission.ok and admission.output_reserved == 1000
    limiter.settle(1000, 1200)  # produced more than reserved: charged, bucket in debt
    assert limiter.output_tokens.level == pytest.approx(-200)


def test_admission_is_all_or_nothing(clock):
    limiter = RateLimiter(rpm=100, itpm=1000, otpm=1000, clock=clock)
    assert limiter.admit(1000, 10).ok
    before = (limiter.requests.level, limiter.output_tokens.level)
    denied = limiter.admit(500, 10)
    assert not denied.ok and denied.limited_by == "input_tokens"
    assert (limiter.requests.level, limiter.output_tokens.level) == before


def test_the_longest_wait_wins(clock):
    limiter = RateLimiter(rpm=60, otpm=60, clock=clock)
    limiter.admit(0, 60)
    denied = limiter.admit(0, 30)
    assert denied.limited_by == "output_tokens"
    assert denied.retry_after == pytest.approx(30)


def test_headers_report_limit_remaining_and_reset(clock):
    limiter = RateLimiter(rpm=60, itpm=6000, otpm=600, clock=clock, wall=lambda: 1_700_000_000.0)
    limiter.admit(100, 60)
    headers = dict(limiter.headers())
    assert headers[b"anthropic-ratelimit-requests-limit"] == b"60"
    assert headers[b"anthropic-ratelimit-requests-remaining"] == b"59"
    assert headers[b"anthropic-ratelimit-requests-reset"] == rfc3339(1_700_000_001).encode()
    assert headers[b"anthropic-ratelimit-input-tokens-limit"] == b"6000"
    assert headers[b"anthropic-ratelimit-input-tokens-remaining"] == b"5900"
    assert headers[b"anthropic-ratelimit-output-tokens-remaining"] == b"540"
    assert headers[b"anthropic-ratelimit-output-tokens-reset"] == b"2023-11-14T22:13:26Z"
    assert len(headers) == 9


def test_only_configured_limits_have_headers(clock):
    limiter = RateLimiter(rpm=10, clock=clock)
    names = {name for name, _ in limiter.headers()}
    assert names == {
        b"anthropic-ratelimit-requests-limit",
        b"anthropic-ratelimit-requests-remaining",
        b"anthropic-ratelimit-requests-reset",
    }
