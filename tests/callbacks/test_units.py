"""Pure units of the callbacks service: address checks, URL rules, signing, retry timing."""

from __future__ import annotations

import base64
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from cryptography.exceptions import InvalidTag
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.callbacks.retries import RetryPolicy, parse_retry_after
from services.callbacks.signing import (
    SECRET_PREFIX,
    SecretBox,
    new_secret,
    secret_key,
    signature_header,
    webhook_headers,
)
from services.callbacks.ssrf import redact_url, refusal, url_problem

# --- ssrf.refusal -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", None),
        ("172.16.5.4", None),
        ("192.168.1.1", None),
        ("fc00::1", None),
        ("fd12:3456:789a::1", None),
        ("169.254.169.254", None),
        ("fe80::1", None),
        ("fe80::1%eth0", None),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", None),
        ("255.255.255.255", None),
        ("0.0.0.0", None),
        ("::", None),
        ("100.64.0.1", None),
        ("198.18.0.1", None),
        ("192.0.2.1", None),
        ("2001:db8::1", None),
        ("::ffff:10.0.0.1", None),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", None),
        ("2002:0a00:0001::", None),
        ("2002:7f00:0001::1", "loopback"),
        ("64:ff9b::a00:1", None),
    ],
)
def test_non_public_addresses_are_refused(address: str, label: str | None) -> None:
    why = refusal(address)
    assert why is not None, address
    if label is not None:
        assert why.startswith(label), why


def test_an_ipv4_mapped_address_is_judged_by_its_ipv4_address() -> None:
    why = refusal("::ffff:10.0.0.1")
    assert why is not None
    assert why.endswith("10.0.0.1")


def test_a_6to4_address_is_judged_by_its_embedded_ipv4_address() -> None:
    why = refusal("2002:0a00:0001::")
    assert why is not None
    assert why.endswith("10.0.0.1")


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(address) is None


def test_a_6to4_address_of_a_public_host_is_allowed() -> None:
    # 2002:0808:0808:: carries 8.8.8.8.
    assert refusal("2002:0808:0808::1") is None


# --- ssrf.url_problem ---------------------------------------------------------------------------

NO_HOSTS: tuple[str, ...] = ()


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/vetgate",
        "http://hooks.example.com:8080/in?x=1",
        "https://8.8.8.8/hook",
        "https://[2606:4700:4700::1111]/hook",
    ],
)
def test_good_urls_have_no_problem(url: str) -> None:
    assert url_problem(url, require_https=False, allowed_hosts=NO_HOSTS) is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/x", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("example.com/hook", "http or https"),
        ("https:///path-only", "host"),
        ("https://example.com/hook#frag", "fragment"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://example.com:port/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
        ("https://example.com/" + "a" * 2048, "at most 2048"),
        ("http://127.0.0.1/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "address"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "address"),
    ],
)
def test_bad_urls_are_named(url: str, words: str) -> None:
    problem = url_problem(url, require_https=False, allowed_hosts=NO_HOSTS)
    assert problem is not None, url
    assert words in problem


def test_production_needs_https_except_for_allowed_hosts() -> None:
    problem = url_problem(
        "http://hooks.example.com/", require_https=True, allowed_hosts=("127.0.0.1",)
    )
    assert problem is not None
    assert "https" in problem
    assert url_problem("https://hooks.example.com/", require_https=True, allowed_hosts=()) is None
    assert (
        url_problem("http://127.0.0.1:9000/", require_https=True, allowed_hosts=("127.0.0.1",))
        is None
    )


def test_allowed_hosts_are_exempt_from_the_address_check() -> None:
    assert url_problem("http://127.0.0.1:8080/", require_https=False, allowed_hosts=NO_HOSTS)
    assert (
        url_problem("http://127.0.0.1:8080/", require_https=False, allowed_hosts=("127.0.0.1",))
        is None
    )
    # Only the host named is exempt, not its neighbours.
    assert url_problem("http://127.0.0.2:8080/", require_https=False, allowed_hosts=("127.0.0.1",))


# --- ssrf.redact_url ----------------------------------------------------------------------------


def test_redact_url_drops_credentials_and_query_values() -> None:
    redacted = redact_url("https://alice:s3cret@Hooks.Example.com:8443/in/v1?token=abc&n=42#top")
    assert "alice" not in redacted
    assert "s3cret" not in redacted
    assert "abc" not in redacted
    assert "42" not in redacted
    assert "top" not in redacted
    assert redacted == "https://hooks.example.com:8443/in/v1?token=redacted&n=redacted"


def test_redact_url_keeps_an_ipv6_host_bracketed() -> None:
    assert redact_url("http://u:p@[2001:db8::1]:8080/x?k=v") == (
        "http://[2001:db8::1]:8080/x?k=redacted"
    )


def test_redact_url_leaves_a_plain_url_alone() -> None:
    assert redact_url("https://example.com/hook") == "https://example.com/hook"


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pw@example.com:99999/x?token=abc",
        "https://user:pw@example.com:port/x?token=abc",
        "http://[::1/",
        "",
        "not a url at all",
        "https://exa mple.com/\x00?token=abc",
    ],
)
def test_redact_url_never_raises_nor_leaks_on_odd_input(url: str) -> None:
    redacted = redact_url(url)
    assert isinstance(redacted, str)
    assert "pw" not in redacted
    assert "abc" not in redacted


# --- signing ----------------------------------------------------------------------------------


def test_new_secret_is_whsec_and_base64_of_32_random_bytes() -> None:
    secret = new_secret()
    assert secret.startswith(SECRET_PREFIX)
    raw = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    assert len(raw) == 32
    assert secret_key(secret) == raw
    assert new_secret() != secret


def _signed(keys: list[bytes], body: bytes, msg_id: str = "msg_1") -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": signature_header(keys, msg_id, int(time.time()), body),
    }


def test_one_key_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    body = b'{"type":"booking.created","n":1}'
    headers = _signed([secret_key(secret)], body)
    assert headers["webhook-signature"].startswith("v1,")
    assert " " not in headers["webhook-signature"]
    assert Webhook(secret).verify(body, headers) == {"type": "booking.created", "n": 1}


def test_two_keys_verify_with_either_secret_and_not_a_third() -> None:
    old, new, stranger = new_secret(), new_secret(), new_secret()
    body = b'{"type":"booking.cancelled"}'
    headers = _signed([secret_key(new), secret_key(old)], body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(body, headers)["type"] == "booking.cancelled"
    assert Webhook(new).verify(body, headers)["type"] == "booking.cancelled"
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(body, headers)


def test_a_changed_body_or_id_does_not_verify() -> None:
    secret = new_secret()
    body = b'{"a":1}'
    headers = _signed([secret_key(secret)], body, msg_id="msg_a")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_b"})


def test_webhook_headers_are_the_standard_webhooks_set() -> None:
    secret = new_secret()
    body = b"{}"
    now = int(time.time())
    headers = webhook_headers([secret_key(secret)], "evt_9", now, body)
    assert headers["webhook-id"] == "evt_9"
    assert headers["webhook-timestamp"] == str(now)
    assert headers["content-type"] == "application/json"
    assert Webhook(secret).verify(body, headers) == {}


def test_secret_box_round_trip_uses_a_fresh_nonce() -> None:
    box = SecretBox("a passphrase")
    secret = new_secret()
    sealed = box.seal(secret)
    assert secret.encode() not in sealed
    assert box.open(sealed) == secret
    again = box.seal(secret)
    assert again != sealed
    assert box.open(again) == secret


def test_secret_box_detects_tampering() -> None:
    box = SecretBox("a passphrase")
    sealed = bytearray(box.seal(new_secret()))
    for index in (0, 12, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises(InvalidTag):
            box.open(bytes(tampered))


def test_secret_box_refuses_another_key() -> None:
    sealed = SecretBox("one passphrase").seal(new_secret())
    with pytest.raises(InvalidTag):
        SecretBox("another passphrase").open(sealed)


# --- retries ----------------------------------------------------------------------------------

SCHEDULE = (0.0, 5.0, 300.0, 1800.0)


def test_the_schedule_without_jitter() -> None:
    policy = RetryPolicy(SCHEDULE, jitter=0.0)
    assert policy.max_attempts == 4
    assert [policy.next_delay(n) for n in range(4)] == [0.0, 5.0, 300.0, 1800.0]


def test_no_delay_after_the_last_attempt() -> None:
    policy = RetryPolicy(SCHEDULE, jitter=0.1)
    assert policy.next_delay(4) is None
    assert policy.next_delay(10) is None
    # Not even a receiver's Retry-After buys another attempt.
    assert policy.next_delay(4, retry_after=5.0) is None


def test_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy(SCHEDULE, jitter=0.1)
    rng = random.Random(1234)
    seen = {policy.next_delay(2, rng=rng) for _ in range(500)}
    assert all(d is not None and 270.0 <= d <= 330.0 for d in seen)
    # It is jitter, not a constant: the spread is actually used on both sides.
    values = [d for d in seen if d is not None]
    assert min(values) < 285.0
    assert max(values) > 315.0
    assert policy.next_delay(0, rng=rng) == 0.0


def test_jitter_is_reproducible_with_a_seeded_random() -> None:
    policy = RetryPolicy(SCHEDULE, jitter=0.2)
    first = [policy.next_delay(n, rng=random.Random(7)) for n in range(4)]
    second = [policy.next_delay(n, rng=random.Random(7)) for n in range(4)]
    assert first == second
    assert first[3] != 1800.0


def test_retry_after_is_honoured_and_clamped() -> None:
    policy = RetryPolicy(SCHEDULE, jitter=0.5, retry_after_min=1.0, retry_after_max=3600.0)
    assert policy.next_delay(1, retry_after=42.0) == 42.0
    assert policy.next_delay(1, retry_after=0.0) == 1.0
    assert policy.next_delay(1, retry_after=-10.0) == 1.0
    assert policy.next_delay(1, retry_after=86400.0) == 3600.0


def test_parse_retry_after_seconds() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("0") == 0.0


def test_parse_retry_after_http_date() -> None:
    now = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(90.0)
    earlier = format_datetime(now - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "Thu, 99 Foo 2030", "12abc"])
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_redact_url_hides_a_bare_query_token() -> None:
    assert redact_url("https://example.com/hook?s3cret") == "https://example.com/hook?redacted"
