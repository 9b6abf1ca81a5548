"""StopOnSignal: the first SIGTERM/SIGINT asks for a stop once; repeats are ignored; handlers are restored."""

import os
import signal

import pytest

from gapt_ds.preemption import StopOnSignal


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_requests_one_stop_and_repeats_are_ignored(sig, capfd):
    calls = []
    stop = StopOnSignal(lambda: calls.append(1))
    before = signal.getsignal(sig)
    with stop.installed():
        os.kill(os.getpid(), sig)
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. the deepspeed launcher forwarding a second signal
    assert calls == [1] and stop.exit_code == 128 + sig
    assert signal.getsignal(sig) is before
    assert capfd.readouterr().err.count("received: finishing this optimizer step") == 1
    err = stop.stopped(7, "runs/x/checkpoints")
    assert err.exit_code == 128 + sig and str(err).startswith(f"stopped by {sig.name} after optimizer step 7")
