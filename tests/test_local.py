"""Local methods: synchronisation schedules (QSR on the paper's values) and the LocalSGD wrapper for users'
own loops under a real 2-process gloo group."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from compsde.algorithms.sync import SyncSchedule

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("lr,h", [(0.008, 4), (0.004, 19), (0.002, 76), (0.001, 306)])
def test_qsr_on_the_papers_values(lr, h):
    # α = 0.0175, H_base = 4: H = max(4, ⌊(α/η)²⌋)
    assert SyncSchedule("qsr", period=4, alpha=0.0175).next_period(100, lr, None) == h


def test_qsr_power_warmup_and_cap():
    s = SyncSchedule("qsr", period=4, alpha=0.0175, warmup_steps=50)
    assert s.next_period(10, 1e-5, None) == 4  # warm-up: the base period, whatever η
    assert s.next_period(50, 0.001, None) == 306
    assert s.next_period(50, 0.001, 100) == 100  # capped by the steps remaining
    assert s.next_period(50, 0.001, 0) == 1
    assert SyncSchedule("qsr", period=4, alpha=0.0175, power=1.0).next_period(0, 0.001, None) == 17  # ⌊17.5⌋
    assert s.next_period(60, 0.0, None) == 4  # η = 0 (a schedule's last step): the base period
    assert SyncSchedule("qsr", period=1, alpha=1.0).next_period(0, 1e-300, None) == 2**62  # no overflow


def test_other_schedules():
    assert SyncSchedule().next_period(5, 0.1, None) == 1
    assert SyncSchedule("constant", period=8).next_period(0, 0.1, 5) == 5
    post = SyncSchedule("post-local", period=8, switch_step=100)
    assert [post.next_period(k, 0.1, None) for k in (0, 99, 100, 500)] == [1, 1, 8, 8]


@pytest.mark.parametrize("kw,match", [
    ({"name": "qsr", "period": 4}, "needs alpha"),
    ({"name": "qsr", "period": 4, "alpha": -1.0}, "alpha"),
    ({"name": "constant", "period": 0}, "period"),
    ({"name": "constant", "period": 4, "alpha": 0.1}, "does not take alpha"),
    ({"name": "every-step", "period": 3}, "does not take period"),
    ({"name": "hourly"}, "sync must be one of"),
    ({"name": "qsr", "alpha": 0.1, "power": math.inf}, "power"),
    ({"name": "post-local", "period": 2, "switch_step": -1}, "switch_step"),
])
def test_bad_schedules_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        SyncSchedule(**kw)


def test_local_sgd_wrapper_in_a_real_group(tmp_path):
    """2 gloo processes (tests/local_sgd_ranks.py): averaging exactly at the steps QSR gives, replicas equal
    right after each averaging and different between, resume mid-period, disagreeing ranks refused."""
    from compsde.distributed.launch import spawn

    out = tmp_path / "local.json"
    spawn(2, [str(ROOT / "tests" / "local_sgd_ranks.py"), str(out)], timeout=60, jobdir=tmp_path / "job")
    r = json.loads(out.read_text())
    # the schedule replayed: lr_k = 0.02/√(1 + k); H decided at the step that follows each averaging
    sched, expected, k = SyncSchedule("qsr", period=2, alpha=0.06), [], 0
    while k < 40:
        k += sched.next_period(k, 0.02 / math.sqrt(1 + k), 40 - k)
        expected.append(k)
    assert r["averaged"] == expected and expected[-1] == 40 and len(set(b - a for a, b in zip([0] + expected, expected))) > 1
    assert r["equal_after"] and r["differ_between"]
    assert r["rounds"] == len(expected) and r["bytes"] == len(expected) * 7 * 4  # 6 weights + 1 bias, float32
    assert r["resume_equal"] and r["disagreement_refused"]
