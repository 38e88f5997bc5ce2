"""The Sotto client library from Python, against two real relays over QUIC."""

import asyncio
import threading

import pytest

import sotto


class Collector(sotto.EventListener):
    """Keeps every event; stops the receive once `until` says so."""

    def __init__(self, profile: sotto.Profile, until):
        self.profile = profile
        self.until = until
        self.events: list[sotto.Event] = []
        self.thread_names: set[str] = set()

    def on_event(self, event: sotto.Event) -> None:
        self.events.append(event)
        self.thread_names.add(threading.current_thread().name)
        if self.until(event):
            self.profile.stop_receiving()


async def receive_until(profile: sotto.Profile, until, wait: float = 20.0) -> list:
    """Receives until an event matches `until` (or `wait` seconds passed); its events."""
    c = Collector(profile, until)
    await profile.receive(c, wait_secs=wait)
    assert any(until(e) for e in c.events), f"not received within {wait} s: {c.events}"
    return c.events


async def receive_idle(profile: sotto.Profile, wait: float = 20.0) -> list:
    """Receives until nothing arrived for half a second and no automatic send is due (the
    set-up's replies have gone out); its events."""
    c = Collector(profile, lambda e: False)
    await profile.receive(c, wait_secs=wait, idle_secs=0.5)
    return c.events


def connected(name: str):
    return lambda e: e == sotto.Event.CONNECTED(contact=name)


def message_from(name: str, text: str):
    return lambda e: (
        isinstance(e, sotto.Event.MESSAGE) and e.contact == name and e.text == text
    )


async def make_pair(tmp_path, relays, options):
    """Alice (relay a) and Bob (relay b), connected to each other."""
    alice = await sotto.create_profile(str(tmp_path / "alice"), "alice's passphrase", options)
    bob = await sotto.create_profile(str(tmp_path / "bob"), "bob's passphrase", options)
    assert await alice.add_relay(relays[0]) == relays[0]
    await bob.add_relay(relays[1])
    link = await alice.invite(name="bob")
    assert link.startswith("sotto:")
    await bob.accept(link, "alice")
    # Alice receives Bob's HELLO and answers; Bob receives the answer.
    assert sotto.Event.CONNECTED(contact="bob") in await receive_idle(alice)
    assert sotto.Event.CONNECTED(contact="alice") in await receive_idle(bob)
    return alice, bob


def test_two_profiles_exchange_messages_both_ways(tmp_path, relays, options):
    async def main():
        alice, bob = await make_pair(tmp_path, relays, options)
        contacts = await alice.contacts()
        assert [(c.name, c.state) for c in contacts] == [("bob", sotto.ContactState.CONNECTED)]
        assert contacts[0].receive_relays == [relays[0].split("@", 1)[1]]
        assert contacts[0].send_relay == relays[1].split("@", 1)[1]

        for i in range(3):
            await alice.send("bob", f"hello bob {i}")
        events = await receive_until(bob, message_from("alice", "hello bob 2"))
        texts = [e.text for e in events if isinstance(e, sotto.Event.MESSAGE)]
        assert texts == ["hello bob 0", "hello bob 1", "hello bob 2"]
        # Each text once: a second receive shows none of them again.
        again = Collector(bob, lambda e: False)
        await bob.receive(again, wait_secs=1.0, idle_secs=0.5)
        assert not [e for e in again.events if isinstance(e, sotto.Event.MESSAGE)]

        await bob.send("alice", "hi alice ☕")
        events = await receive_until(alice, message_from("bob", "hi alice ☕"))
        msg = next(e for e in events if isinstance(e, sotto.Event.MESSAGE))
        assert msg.seq >= 1 and msg.timestamp > 0

        # The profile is on disk, encrypted: it opens again with its passphrase.
        await alice.shutdown()
        reopened = await sotto.open_profile(str(tmp_path / "alice"), "alice's passphrase", options)
        assert await reopened.relays() == [relays[0]]
        assert [c.name for c in await reopened.contacts()] == ["bob"]
        await reopened.shutdown()
        await bob.shutdown()

    asyncio.run(main())


def test_send_while_receiving(tmp_path, relays, options):
    """A send does not wait for a running receive on the same profile."""

    async def main():
        alice, bob = await make_pair(tmp_path, relays, options)
        bob_receiving = asyncio.ensure_future(
            receive_until(bob, message_from("alice", "while you listen"))
        )
        alice_receiving = asyncio.ensure_future(
            receive_until(alice, message_from("bob", "heard you"))
        )
        await asyncio.sleep(0.2)
        await alice.send("bob", "while you listen")
        await bob_receiving
        await bob.send("alice", "heard you")
        await alice_receiving
        with pytest.raises(sotto.SottoError.ReceiverBusy):
            c = Collector(alice, lambda e: False)
            await asyncio.gather(alice.receive(c, wait_secs=1.0), alice.receive(c, wait_secs=1.0))
        await alice.shutdown()
        await bob.shutdown()

    asyncio.run(main())


def test_wrong_passphrase_raises_a_clear_exception(tmp_path, options):
    async def main():
        home = str(tmp_path / "p")
        p = await sotto.create_profile(home, "right", options)
        await p.shutdown()
        with pytest.raises(sotto.SottoError.WrongPassphrase) as e:
            await sotto.open_profile(home, "wrong", options)
        assert "wrong passphrase" in str(e.value)
        with pytest.raises(sotto.SottoError.NotInitialised) as e:
            await sotto.open_profile(str(tmp_path / "nothing"), "right", options)
        assert "no profile in" in str(e.value)
        with pytest.raises(sotto.SottoError.AlreadyInitialised):
            await sotto.create_profile(home, "right", options)
        with pytest.raises(sotto.SottoError.InvalidArgument):
            await sotto.open_profile(home, "", options)
        with pytest.raises(sotto.SottoError.InvalidArgument) as e:
            await sotto.open_profile(home, "right", sotto.ProfileOptions(traffic_policy="loud"))
        assert "unknown traffic policy" in str(e.value)

    asyncio.run(main())


def test_bad_link_and_other_errors_raise_clear_exceptions(tmp_path, relays, options):
    async def main():
        p = await sotto.create_profile(str(tmp_path / "p"), "pass", options)
        with pytest.raises(sotto.SottoError.NoRelay):
            await p.invite()
        with pytest.raises(sotto.SottoError.BadRelayAddress) as e:
            await p.add_relay("sotto://not-a-key@")
        assert "invalid relay address" in str(e.value)
        await p.add_relay(relays[0])
        for link in ["sotto:garbage", "hello", "sotto:" + "A" * 200]:
            with pytest.raises(sotto.SottoError.BadInvitation) as e:
                await p.accept(link, "someone")
            assert "malformed invitation" in str(e.value)
        # Nothing was kept of the failed attempts.
        assert await p.contacts() == []
        with pytest.raises(sotto.SottoError.UnknownContact) as e:
            await p.send("nobody", "hi")
        assert "unknown contact `nobody`" in str(e.value)
        with pytest.raises(sotto.SottoError.BadName):
            await p.invite(name="a:b")
        # A used invitation: accepted twice.
        other = await sotto.create_profile(str(tmp_path / "o"), "pass", options)
        await other.add_relay(relays[1])
        link = await p.invite(name="o")
        await other.accept(link, "p")
        third = await sotto.create_profile(str(tmp_path / "t"), "pass", options)
        await third.add_relay(relays[1])
        with pytest.raises(sotto.SottoError.InvitationUsed):
            await third.accept(link, "p")
        for x in (p, other, third):
            await x.shutdown()
        with pytest.raises(sotto.SottoError.Closed):
            await p.contacts()

    asyncio.run(main())


def test_a_failing_listener_loses_no_message(tmp_path, relays, options):
    """A listener that raises stops the receive; the text comes again the next time."""

    class Failing(sotto.EventListener):
        def on_event(self, event):
            if isinstance(event, sotto.Event.MESSAGE):
                raise RuntimeError("the app's database is full")

    async def main():
        alice, bob = await make_pair(tmp_path, relays, options)
        await alice.send("bob", "keep me")
        with pytest.raises(sotto.SottoError.ListenerFailed) as e:
            await bob.receive(Failing(), wait_secs=20.0)
        assert "the app's database is full" in str(e.value)
        events = await receive_until(bob, message_from("alice", "keep me"))
        assert sum(isinstance(e, sotto.Event.MESSAGE) for e in events) == 1
        await alice.shutdown()
        await bob.shutdown()

    asyncio.run(main())


class Inbox(sotto.EventListener):
    """Hands each event to the asyncio loop, for receives that run in the background."""

    def __init__(self, loop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def on_event(self, event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def next(self, match, timeout: float = 30.0):
        while True:
            event = await asyncio.wait_for(self.queue.get(), timeout=timeout)
            if match(event):
                return event


def test_rotate_then_delete(tmp_path, relays, options):
    """Bob moves the queue he receives Alice's messages on to relay a; messages follow it.
    Then he deletes Alice."""

    async def main():
        alice, bob = await make_pair(tmp_path, relays, options)
        loop = asyncio.get_running_loop()
        a_in, b_in = Inbox(loop), Inbox(loop)
        a_rx = asyncio.ensure_future(alice.receive(a_in))
        b_rx = asyncio.ensure_future(bob.receive(b_in))

        await bob.rotate("alice", relays[0])
        with pytest.raises(sotto.SottoError.Rotating):
            await bob.rotate("alice", relays[0])
        await a_in.next(lambda e: e == sotto.Event.MOVED(contact="bob"))
        await b_in.next(lambda e: e == sotto.Event.ROTATED(contact="alice"))
        await alice.send("bob", "to your new queue")
        await b_in.next(message_from("alice", "to your new queue"))
        [c] = await bob.contacts()
        # The old queue, on relay b, is deleted shortly after the rotation (automatically).
        assert relays[0].split("@", 1)[1] in c.receive_relays

        await bob.delete("alice")
        assert await bob.contacts() == []
        with pytest.raises(sotto.SottoError.UnknownContact):
            await bob.send("alice", "gone")
        for p, rx in ((alice, a_rx), (bob, b_rx)):
            p.stop_receiving()
            await rx
            await p.shutdown()

    asyncio.run(main())
