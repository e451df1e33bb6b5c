"""Mirror state machine: table completeness, and the scenarios users rely on (simulated pair)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hakit.core import mirror as mm
from hakit.core.mirror_model import MAX_PUBLISHED_REASON
from hakit.core.outcomes import Accepted, Refused, UnexpectedEvent
from hakit.testing.mirror_sim import MirrorSim

C = mm.Cmd


def first_start(sim: MirrorSim) -> None:
    assert isinstance(sim.command("node1", C.PRIM), Accepted)
    assert isinstance(sim.command("node2", C.SECOND), Accepted)
    assert sim.states() == ("PRIM ready", "SECOND ready")


# --- the table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", list(mm.Phase))
def test_every_command_and_peer_change_has_an_answer_in_every_phase(phase: mm.Phase) -> None:
    for cmd in mm.Cmd:
        assert (phase, f"cmd:{cmd.value}") in mm.TRANSITIONS
    assert (phase, "peer") in mm.TRANSITIONS


@pytest.mark.parametrize("phase", list(mm.Phase))
@pytest.mark.parametrize("op", list(mm.Op))
def test_operation_completions_only_where_that_operation_runs(phase: mm.Phase, op: mm.Op) -> None:
    expected = mm.OP_OF_PHASE.get(phase) is op
    assert ((phase, f"done:{op.value}") in mm.TRANSITIONS) == expected
    if not expected:
        m = mm.Mirror("app", "node1", "node2", phase=phase)
        with pytest.raises(UnexpectedEvent):
            mm.step(m, mm.OpDone(op, True), 0.0, "x")


def test_display_covers_every_phase() -> None:
    for phase in mm.Phase:
        state, status = mm.Mirror("a", "n1", "n2", phase=phase).display()
        assert state in ("STOP", "WAIT", "ALONE", "PRIM", "SECOND")
        assert status in ("not-ready", "transient", "ready")


# --- first start and data freshness --------------------------------------------------------


def test_first_start_needs_prim() -> None:
    sim = MirrorSim()
    sim.command("node1", C.START)
    sim.command("node2", C.START)
    assert sim.states() == ("WAIT not-ready", "WAIT not-ready")
    assert "first start: run `hakit prim`" in sim.nodes["node1"].machine.blocked
    sim.command("node1", C.PRIM)
    assert sim.states() == ("PRIM ready", "SECOND ready")
    assert sim.data("node1").gen_id == sim.data("node2").gen_id


def test_second_is_refused_without_a_primary_and_prim_with_one() -> None:
    sim = MirrorSim()
    answer = sim.command("node2", C.SECOND)
    assert isinstance(answer, Refused)
    assert "`second` needs node1 to be primary" in answer.message
    first_start(sim)
    sim.command("node2", C.STOP)
    answer = sim.command("node2", C.PRIM)
    assert isinstance(answer, Refused)
    assert "node1 is primary" in answer.message
    assert "`hakit swap app`" in answer.message


def test_primary_lost_secondary_takes_over_then_old_primary_returns_as_secondary() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.crash("node1")
    assert sim.state("node2") == "ALONE ready"
    assert sim.data("node2").alone_ok
    sim.boot("node1")
    assert sim.states() == ("SECOND ready", "PRIM ready")
    assert not sim.double_vip


def test_stale_node_started_alone_waits_and_says_why() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.crash("node2")  # node1 goes ALONE: node2's copy is stale from now
    sim.crash("node1")
    sim.boot("node2")
    assert sim.state("node2") == "WAIT not-ready"
    why = sim.nodes["node2"].machine.blocked
    assert "data may not be up to date" in why
    assert "`hakit prim`" in why
    sim.boot("node1")  # the last primary returns: it resumes, the stale one joins
    assert sim.states() == ("PRIM ready", "SECOND ready")


def test_last_alone_primary_restarts_alone() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.crash("node2")
    sim.crash("node1")
    sim.boot("node1")
    assert sim.state("node1") == "ALONE ready"


def test_whole_cluster_power_cut_last_primary_resumes() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.power_cut_all()
    sim.boot("node2")  # the old secondary first: it cannot know, it waits
    assert sim.state("node2") == "WAIT not-ready"
    sim.boot("node1")
    assert sim.states() == ("PRIM ready", "SECOND ready")


def test_whole_cluster_power_cut_primary_alone_waits_for_its_ready_secondary() -> None:
    """A primary with a ready secondary cannot know the secondary did not take over."""
    sim = MirrorSim()
    first_start(sim)
    sim.power_cut_all()
    sim.boot("node1")
    assert sim.state("node1") == "WAIT not-ready"
    sim.boot("node2")
    assert sim.states() == ("PRIM ready", "SECOND ready")


def test_clean_stop_of_both_then_start_of_both() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.command("node2", C.STOP)  # secondary first (as `hakit stop --all` does)
    assert sim.state("node1") == "ALONE ready"
    sim.command("node1", C.STOP)
    sim.command("node2", C.START)
    assert sim.state("node2") == "WAIT not-ready"
    assert "node1 has newer data" in sim.nodes["node2"].machine.blocked
    sim.command("node1", C.START)
    assert sim.states() == ("PRIM ready", "SECOND ready")


def test_stopping_the_primary_fails_over() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.command("node1", C.STOP)
    assert sim.states() == ("STOP not-ready", "ALONE ready")
    assert not sim.double_vip
    sim.command("node1", C.START)
    assert sim.states() == ("SECOND ready", "PRIM ready")


def test_prim_overrides_stale_data_loudly_primforce_overrides_inconsistency() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.crash("node2")
    sim.crash("node1")
    sim.boot("node2")
    assert sim.state("node2") == "WAIT not-ready"
    sim.command("node2", C.PRIM)
    assert sim.state("node2") == "ALONE ready"
    sim.boot("node1")  # both were primary apart: diverged data, nobody joins silently
    assert sim.state("node1") == "WAIT not-ready"
    assert "data differ" in sim.nodes["node1"].machine.blocked
    sim.command("node1", C.SECOND)  # the operator accepts losing node1's changes
    assert sim.states() == ("SECOND ready", "PRIM ready")


def test_inconsistent_node_needs_primforce() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.command("node2", C.STOP)
    sim.fail("node2", mm.Op.SYNC)  # resync interrupted
    sim.command("node2", C.START)
    assert not sim.data("node2").consistent
    sim.command("node1", C.STOP)
    answer = sim.command("node2", C.PRIM)
    assert isinstance(answer, Refused)
    assert "primforce" in answer.message
    sim.fail("node2", mm.Op.SYNC, on=False)
    answer = sim.command("node2", C.PRIMFORCE)
    assert isinstance(answer, Accepted)
    assert sim.state("node2") == "ALONE ready"
    assert any("PRIMFORCE" in line for line in sim.nodes["node2"].log)


def test_swap_both_ways() -> None:
    sim = MirrorSim()
    first_start(sim)
    assert isinstance(sim.command("node1", C.SWAP), Accepted)
    assert sim.states() == ("SECOND ready", "PRIM ready")
    assert not sim.double_vip
    answer = sim.command("node1", C.SWAP)
    assert isinstance(answer, Refused)
    assert "run swap on the primary" in answer.message
    sim.command("node2", C.SWAP)
    assert sim.states() == ("PRIM ready", "SECOND ready")
    assert not sim.double_vip


def test_failover_off_secondary_waits_for_operator() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.command("node2", C.FAILOVER_OFF)
    sim.crash("node1")
    assert sim.state("node2") == "WAIT not-ready"
    assert "failover is off" in sim.nodes["node2"].machine.blocked
    sim.command("node2", C.PRIM)
    assert sim.state("node2") == "ALONE ready"


def test_swap_works_with_failover_off() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.command("node2", C.FAILOVER_OFF)
    sim.command("node1", C.SWAP)
    assert sim.states() == ("SECOND ready", "PRIM ready")


def test_default_primary_fails_back_after_the_other_is_ready() -> None:
    sim = MirrorSim(default_primary="node1")
    first_start(sim)
    sim.crash("node1")
    assert sim.state("node2") == "ALONE ready"
    sim.boot("node1")
    assert sim.states() == ("PRIM ready", "SECOND ready")
    assert any("failback" in line for line in sim.nodes["node2"].log)
    assert not sim.double_vip


def test_a_failback_delay_keeps_the_roles_until_it_runs_out() -> None:
    sim = MirrorSim(default_primary="node1", failback_delay=30)
    first_start(sim)
    sim.crash("node1")
    sim.boot("node1")
    assert sim.states() == ("SECOND ready", "PRIM ready")  # back, not yet primary again
    assert any("failback to node1" in line and "in 30 s" in line for line in sim.nodes["node2"].log)
    sim.advance(29)
    assert sim.states() == ("SECOND ready", "PRIM ready")
    sim.advance(1)
    assert sim.states() == ("PRIM ready", "SECOND ready")
    assert not sim.double_vip


def test_a_failback_delay_starts_again_when_the_default_primary_leaves_and_returns() -> None:
    sim = MirrorSim(default_primary="node1", failback_delay=30)
    first_start(sim)
    sim.crash("node1")
    sim.boot("node1")
    sim.advance(20)
    sim.crash("node1")  # gone before the delay ran out: no failback to a node that is not there
    assert sim.state("node2") == "ALONE ready"
    sim.advance(15)  # the first wake-up comes: nothing to do
    assert sim.state("node2") == "ALONE ready"
    sim.boot("node1")
    sim.advance(20)  # 20 s after its return: the new delay still runs
    assert sim.states() == ("SECOND ready", "PRIM ready")
    sim.advance(10)
    assert sim.states() == ("PRIM ready", "SECOND ready")


def test_due_is_handled_in_every_phase() -> None:
    for phase in mm.Phase:
        m = mm.Mirror("app", "node1", "node2", "node2", phase=phase, failback_at=5.0)
        new, _ = mm.step(m, mm.Due(), 1.0, "x")  # before its time: nothing changes
        assert new.phase is phase


def test_failing_start_prim_stops_the_node_and_the_other_takes_over() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.command("node1", C.SWAP)
    sim.fail("node1", mm.Op.BECOME_PRIMARY)
    sim.command("node2", C.SWAP)  # node1 must start as primary, and fails
    assert sim.states() == ("STOP not-ready", "ALONE ready")
    assert any("start as primary FAILED" in line for line in sim.nodes["node1"].log)


def test_restart_keeps_the_role() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.command("node1", C.RESTART)
    assert sim.states() == ("PRIM ready", "SECOND ready")


def test_stopstart_of_primary_fails_over_and_comes_back_secondary() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.command("node1", C.STOPSTART)
    assert sim.states() == ("SECOND ready", "PRIM ready")


def test_commands_are_answered_never_ignored() -> None:
    sim = MirrorSim()
    first_start(sim)
    answer = sim.command("node1", C.START)
    assert isinstance(answer, Refused)
    assert "already primary" in answer.message
    sim.command("node2", C.STOP)
    answer = sim.command("node2", C.STOP)
    assert isinstance(answer, Accepted)
    assert "already stopped" in answer.message


def test_split_brain_first_primary_stays_and_the_other_rejoins_keeping_its_files() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.set_partition(True)
    assert sim.states() == ("ALONE ready", "ALONE ready")  # node2 took over: split brain
    sim.set_partition(False)
    assert sim.states() == ("PRIM ready", "SECOND ready")
    assert any("SPLIT BRAIN" in line and "node1 stays primary" in line for line in sim.log("node1"))
    assert any("node2 leaves the primary role" in line for line in sim.log("node2"))
    [why] = sim.nodes["node2"].preserved
    assert "diverged" in why
    assert "split brain resolved by policy keep: first-primary in favour of node1" in why
    assert sim.data("node1").gen_id == sim.data("node2").gen_id
    assert [n.holds_vip for n in sim.nodes.values()] == [True, False]


@pytest.mark.parametrize(
    ("keep", "states", "loser"),
    [
        ("last-primary", ("SECOND ready", "PRIM ready"), "node1"),
        ("node2", ("SECOND ready", "PRIM ready"), "node1"),
        ("node1", ("PRIM ready", "SECOND ready"), "node2"),
    ],
)
def test_split_brain_policies(keep: str, states: tuple[str, str], loser: str) -> None:
    sim = MirrorSim(keep=keep)
    first_start(sim)
    sim.set_partition(True)
    sim.set_partition(False)
    assert sim.states() == states
    assert len(sim.nodes[loser].preserved) == 1


def test_split_brain_manual_policy_waits_for_the_operator_and_keeps_the_other_copy() -> None:
    sim = MirrorSim(keep="manual")
    first_start(sim)
    sim.set_partition(True)
    sim.set_partition(False)
    assert sim.states() == ("WAIT not-ready", "WAIT not-ready")
    assert "choose the side to keep with `hakit prim`" in sim.nodes["node1"].machine.blocked
    sim.command("node2", C.PRIM)
    assert sim.states() == ("WAIT not-ready", "ALONE ready")
    assert "`hakit second` here accepts that" in sim.nodes["node1"].machine.blocked
    sim.command("node1", C.SECOND)
    assert sim.states() == ("SECOND ready", "PRIM ready")
    [why] = sim.nodes["node1"].preserved
    assert "(`hakit second`)" in why


def test_an_operator_second_over_newer_data_keeps_them() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.crash("node2")  # node1 continues alone: new changes node2 never saw
    sim.command("node1", C.STOP)
    sim.boot("node2", start=False)
    sim.command("node2", C.PRIM)  # the operator forces the stale copy to primary
    sim.boot("node1")
    assert sim.state("node1") == "WAIT not-ready"
    sim.command("node1", C.SECOND)
    assert sim.states() == ("SECOND ready", "PRIM ready")
    [why] = sim.nodes["node1"].preserved
    assert "diverged" in why


# --- property: never two VIPs while the nodes see each other ---------------------------------

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["node1", "node2"]),
        st.sampled_from([*list(C), "crash", "boot", "fail-start", "heal-start"]),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(ACTIONS)
def test_never_two_primaries_without_a_partition(actions: list[tuple[str, object]]) -> None:
    sim = MirrorSim()
    first_start(sim)
    for node, what in actions:
        n = sim.nodes[node]
        if what == "crash":
            if n.up:
                sim.crash(node)
        elif what == "boot":
            if not n.up:
                sim.boot(node)
        elif what == "fail-start":
            sim.fail(node, mm.Op.BECOME_PRIMARY)
        elif what == "heal-start":
            sim.fail(node, mm.Op.BECOME_PRIMARY, on=False)
        elif n.up:
            assert isinstance(what, mm.Cmd)
            sim.command(node, what)
        assert not sim.double_vip
        a, b = (sim.nodes[x] for x in ("node1", "node2"))
        if a.up and b.up:
            assert not (a.machine.phase in mm.PRIMARYISH and b.machine.phase in mm.PRIMARYISH), (
                sim.states()
            )


def test_primary_losing_its_secondary_while_stopping_starts_a_new_generation() -> None:
    """The secondary stops; the primary is told to stop before it noticed: its data is newer,
    so the old secondary must not come back primary on its own."""
    sim = MirrorSim()
    first_start(sim)
    n1, n2 = sim.nodes["node1"], sim.nodes["node2"]
    sim._apply(n2, mm.Command(C.STOP))  # node2 leaves; node1 has not seen it yet
    sim._apply(n1, mm.Command(C.STOP))  # node1 starts demoting with a stale view
    sim.settle()
    assert sim.states() == ("STOP not-ready", "STOP not-ready")
    assert mm.compare(sim.data("node1"), sim.data("node2")) is mm.Cmp.NEWER
    sim.command("node2", C.START)
    assert sim.state("node2") == "WAIT not-ready"
    sim.command("node1", C.START)
    assert sim.states() == ("PRIM ready", "SECOND ready")


def test_replication_lost_on_the_primary_starts_a_generation_and_the_secondary_resyncs() -> None:
    """The secondary stopped acknowledging but heartbeats still flow (replication network cut):
    the primary continues ALONE with a new generation; the secondary sees the primary move on
    without it, leaves and joins again (resynchronisation)."""
    sim = MirrorSim()
    first_start(sim)
    gen = sim.data("node1").gen
    sim.inject("node1", mm.ReplicaLost("no acknowledgement within 0.8 s"))
    sim.settle()
    assert sim.data("node1").gen > gen
    assert sim.states() == ("PRIM ready", "SECOND ready")  # rejoined
    assert sim.data("node2").gen_id == sim.data("node1").gen_id


def test_a_fatal_replication_error_on_the_secondary_needs_an_operator() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.inject("node2", mm.ReplicaLost("WRITE 'f': ENOSPC", fatal=True))
    sim.settle()
    assert sim.states() == ("ALONE ready", "WAIT not-ready")
    assert "ENOSPC" in sim.nodes["node2"].machine.blocked
    sim.command("node2", mm.Cmd.SECOND)
    sim.settle()
    assert sim.states() == ("PRIM ready", "SECOND ready")


@pytest.mark.parametrize("phase", list(mm.Phase))
def test_replica_lost_is_answered_in_every_phase(phase: mm.Phase) -> None:
    assert (phase, "replica-lost") in mm.TRANSITIONS


def test_a_stream_that_ends_keeps_the_secondary_ready_to_take_over() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.inject("node2", mm.ReplicaLost("the primary closed the connection"))
    sim.settle()
    assert sim.states() == ("PRIM ready", "SECOND ready")
    sim.crash("node1")  # the primary was dying: the secondary takes over, data consistent
    assert sim.state("node2") == "ALONE ready"


# --- checkers ------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", list(mm.Phase))
def test_checker_events_have_an_answer_in_every_phase(phase: mm.Phase) -> None:
    assert (phase, "holds") in mm.TRANSITIONS
    for action in ("restart", "stopstart", "stop"):
        assert (phase, f"recover:{action}") in mm.TRANSITIONS


def test_a_checker_restart_on_the_primary_restarts_the_application_without_failover() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.inject("node1", mm.Recover("restart", "restart of app: process checker p failed 3 times"))
    assert sim.nodes["node1"].machine.phase is mm.Phase.RESTARTING
    sim.settle()
    assert sim.states() == ("PRIM ready", "SECOND ready")
    assert any("restart of app" in line for line in sim.nodes["node1"].log)


def test_a_checker_stopstart_on_the_primary_fails_over_and_it_returns_as_secondary() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.inject("node1", mm.Recover("stopstart", "stopstart of app: tcp checker web failed"))
    sim.settle()
    assert sim.states() == ("SECOND ready", "PRIM ready")
    assert not sim.double_vip


def test_a_checker_stop_stops_the_module_and_keeps_the_reason() -> None:
    sim = MirrorSim()
    first_start(sim)
    why = "stop of app: tcp checker web failed; loop protection"
    sim.inject("node1", mm.Recover("stop", why))
    sim.settle()
    assert sim.states() == ("STOP not-ready", "ALONE ready")
    assert sim.nodes["node1"].machine.reason == why
    sim.command("node1", C.START)
    assert sim.nodes["node1"].machine.failed == ""
    assert sim.states() == ("SECOND ready", "PRIM ready")


def test_a_wait_checker_on_the_primary_hands_over_and_resumes_as_secondary() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.inject("node1", mm.Holds(("interface checker nic down (eth0 has no link)",)))
    sim.settle()
    assert sim.states() == ("WAIT not-ready", "ALONE ready")
    assert "eth0 has no link" in sim.nodes["node1"].machine.blocked
    assert not sim.double_vip
    sim.inject("node1", mm.Holds(()))
    sim.settle()
    assert sim.states() == ("SECOND ready", "PRIM ready")


def test_a_wait_checker_holds_a_start_and_a_secondary() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.inject("node2", mm.Holds(("ping checker gw down",)))
    sim.settle()
    assert sim.states() == ("ALONE ready", "WAIT not-ready")
    sim.inject("node2", mm.Holds(()))
    sim.settle()
    assert sim.states() == ("PRIM ready", "SECOND ready")
    # a hold that arrives while the promotion runs is applied when it ends
    sim2 = MirrorSim()
    sim2.command("node1", C.PRIM)
    sim2.inject("node1", mm.Holds(("module checker db: waiting",)))  # during nothing: WAITING
    sim2.settle()
    assert sim2.state("node1") == "WAIT not-ready"
    sim2.inject("node1", mm.Holds(()))
    sim2.settle()
    assert sim2.state("node1") == "ALONE ready"


# --- split-brain protection with a witness ----------------------------------------------------


@pytest.mark.parametrize("phase", list(mm.Phase))
def test_arbiter_answers_have_a_handler_in_every_phase(phase: mm.Phase) -> None:
    assert (phase, "arbiter") in mm.TRANSITIONS


def witnessed() -> MirrorSim:
    sim = MirrorSim(witness=True)
    first_start(sim)
    assert sim.holder == "node1"
    return sim


def test_a_split_between_the_nodes_keeps_the_primary_that_holds_the_lease() -> None:
    sim = witnessed()
    sim.set_partition(True)  # both still reach the witness
    assert sim.states() == ("ALONE ready", "SECOND transient")
    assert "lease held by node1" in sim.nodes["node2"].machine.reason
    assert not sim.double_vip
    sim.set_partition(False)
    assert sim.states() == ("PRIM ready", "SECOND ready")
    assert not sim.double_vip


def test_an_isolated_primary_steps_down_and_the_witness_grants_the_other() -> None:
    sim = witnessed()
    sim.reaches["node1"] = False
    sim.set_partition(True)  # node1 sees neither node2 nor the witness
    assert sim.states() == ("WAIT not-ready", "ALONE ready")
    assert sim.holder == "node2"
    assert any("it may be primary on the other side" in ln for ln in sim.log("node1"))
    assert not sim.double_vip
    sim.reaches["node1"] = True
    sim.set_partition(False)
    assert sim.states() == ("SECOND ready", "PRIM ready")
    assert not sim.double_vip


def test_asymmetric_the_secondary_sees_only_the_witness() -> None:
    sim = witnessed()
    sim.set_witness(node1=False)  # the primary loses the witness, still sees node2
    assert sim.states() == ("PRIM ready", "SECOND ready")
    assert any("still primary while node2 vouches for it" in ln for ln in sim.log("node1"))
    sim.set_partition(True)  # and now node2 too: node1 can prove nothing, it steps down
    assert sim.states() == ("WAIT not-ready", "ALONE ready")
    assert not sim.double_vip


@pytest.mark.parametrize("arbiter_first", [False, True], ids=["peer-first", "lease-first"])
def test_a_primary_frozen_past_its_lease_steps_down_for_the_one_the_witness_granted(
    arbiter_first: bool,
) -> None:
    """Chaos seed 110, round 2: the primary (node2, primary first) is frozen past the timeout;
    node1 is granted the lease and takes over. node2 resumes and sees node1 primary — before or
    after it learns that its lease lapsed. node1 must stay primary whatever `keep` says (the
    first-primary policy used to make node1 step down too, and both then waited for each other
    for ever); node2 steps down and rejoins, no acknowledged write lost."""
    sim = witnessed()
    sim.command("node1", C.SWAP)  # node2 primary, node1 secondary: node2 is the first primary
    assert sim.states() == ("SECOND ready", "PRIM ready")
    before = [sim.write() for _ in range(2)]
    sim.freeze("node2")
    assert sim.state("node1") == "ALONE ready"
    assert sim.holder == "node1"
    during = sim.write()
    sim.thaw("node2", arbiter_first=arbiter_first)
    assert sim.states() == ("PRIM ready", "SECOND ready")
    assert not sim.double_vip
    assert {*before, during} <= sim.acked
    assert not sim.lost_writes()
    assert not any("SPLIT BRAIN" in ln or "leaving the primary" in ln for ln in sim.log("node1"))
    assert any("joining as secondary" in ln for ln in sim.log("node2"))


def test_without_an_exclusive_arbiter_the_keep_policy_still_decides() -> None:
    """The same freeze without a witness: both are primary when node2 resumes; first-primary
    keeps node2 (primary first) and node1 rejoins, its changes kept."""
    sim = MirrorSim()
    first_start(sim)
    sim.command("node1", C.SWAP)
    sim.freeze("node2")
    assert sim.state("node1") == "ALONE ready"
    sim.thaw("node2")
    assert sim.states() == ("SECOND ready", "PRIM ready")
    assert any("SPLIT BRAIN" in ln for ln in sim.log("node1"))


def test_witness_down_then_the_peer_lost_stops_the_service_rather_than_risk_two() -> None:
    sim = witnessed()
    sim.set_witness(node1=False, node2=False)
    assert sim.states() == (
        "PRIM ready",
        "SECOND ready",
    )  # nothing happens while both see each other
    sim.crash("node2")
    assert sim.state("node1") == "WAIT not-ready"
    assert "waiting for the arbiter" in sim.nodes["node1"].machine.blocked
    sim.set_witness(node1=True)  # the witness comes back: node1 is primary again
    assert sim.state("node1") == "ALONE ready"


def test_primforce_overrides_a_missing_witness() -> None:
    sim = MirrorSim(witness=True)
    sim.set_witness(node1=False, node2=False)
    sim.command("node1", C.PRIM)
    assert sim.state("node1") == "WAIT not-ready"
    sim.command("node1", C.PRIMFORCE)
    assert sim.state("node1") == "ALONE ready"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "cut",
                "heal",
                "cut12",  # node2 no longer hears node1
                "cut21",
                "heal12",
                "heal21",
                "w1-off",
                "w1-on",
                "w2-off",
                "w2-on",
                "crash1",
                "crash2",
                "boot1",
                "boot2",
                "stop1",
                "stop2",
                "start1",
                "start2",
                "write",
                "freeze1",
                "freeze2",
                "thaw1",
                "thaw2",
                "lease-thaw1",  # resumes and learns the end of its lease first
                "lease-thaw2",
            ]
        ),
        max_size=30,
    )
)
def test_with_a_witness_never_two_primaries_whatever_fails(steps: list[str]) -> None:
    """One-way cuts, witness cuts, crashes and restarts in any order: never two VIP holders, and
    no write acknowledged by the secondary is missing from whoever serves."""
    sim = witnessed()
    replicated: set[int] = set()
    for step in steps:
        n = f"node{step[-1]}"
        if step == "cut":
            sim.set_partition(True)
        elif step == "heal":
            sim.set_partition(False)
        elif step.startswith(("cut", "heal")):
            sim.cut(f"node{step[-2]}", f"node{step[-1]}", on=step.startswith("cut"))
        elif step.startswith("w"):
            sim.set_witness(**{f"node{step[1]}": step.endswith("on")})
        elif step.startswith("freeze") and sim.nodes[n].up and not sim.nodes[n].frozen:
            sim.freeze(n)
        elif "thaw" in step and sim.nodes[n].frozen:
            sim.thaw(n, arbiter_first=step.startswith("lease"))
        elif sim.nodes[n].frozen and step.startswith(("stop", "start")):
            pass  # a frozen node takes no command
        elif step.startswith("crash") and sim.nodes[n].up:
            sim.crash(n)
        elif step.startswith("boot") and not sim.nodes[n].up:
            sim.boot(n)
        elif step.startswith(("stop", "start")) and sim.nodes[n].up:
            sim.command(n, C.STOP if step.startswith("stop") else C.START)
        elif step == "write":
            w = sim.write()
            if w is not None and all(w in node.data for node in sim.nodes.values()):
                replicated.add(w)
        assert not sim.double_vip, (steps, sim.states())
        assert not sim.lost_writes(), (steps, sim.states())
        assert not (sim.acked & sim.refused)


# --- one-way partitions and the replication's acknowledgements (issue 12, A and B) -------------


def test_a_primary_without_lease_steps_down_when_its_peer_stops_hearing_it() -> None:
    """B: node1 cut from the witness, then node1 -> node2 dropped (node1 still hears node2).
    node2 stops vouching for node1 and asks; node1 leaves the role, VIPs first, before the
    witness grants node2: never two primaries."""
    sim = witnessed()
    sim.set_witness(node1=False)
    assert sim.states() == ("PRIM ready", "SECOND ready")
    sim.cut("node1", "node2")
    assert not sim.double_vip
    assert sim.state("node2") == "ALONE ready"
    assert not sim.nodes["node1"].holds_vip
    assert any("no longer vouches" in ln for ln in sim.log("node1"))
    sim.cut("node1", "node2", on=False)  # healed: it converges without an operator
    sim.set_witness(node1=True)
    assert sim.states() == ("SECOND ready", "PRIM ready")
    assert not sim.double_vip


def test_an_isolated_primary_acknowledges_nothing_after_the_replication_broke() -> None:
    """A: node1 isolated while the application writes. The writes after the replication broke
    are held; node1 cannot renew its lease, refuses them (EIO) and steps down; node2 takes over
    with every acknowledged write."""
    sim = witnessed()
    before = [sim.write() for _ in range(3)]
    sim.reaches["node1"] = False
    sim.cuts = {("node1", "node2"), ("node2", "node1")}
    after = sim.write()  # the secondary no longer acknowledges: held
    assert after is not None
    assert after in sim.refused
    assert after not in sim.acked
    assert sim.states() == ("WAIT not-ready", "ALONE ready")
    assert set(before) <= sim.nodes["node2"].data
    assert not sim.lost_writes()
    assert any("held writes refused" in ln for ln in sim.log("node1"))


def test_a_primary_confirmed_by_the_witness_releases_the_held_writes() -> None:
    """A, the other side: the link between the nodes breaks, node1 still reaches the witness,
    which renews its lease after the break: the held write is acknowledged, node2 is refused."""
    sim = witnessed()
    sim.cuts = {("node1", "node2"), ("node2", "node1")}
    w = sim.write()
    assert w is not None
    assert w in sim.acked
    assert sim.states() == ("ALONE ready", "SECOND transient")
    assert any("held writes released" in ln for ln in sim.log("node1"))
    assert not sim.double_vip


def test_a_held_write_waits_for_a_grant_asked_after_the_break() -> None:
    m = mm.Mirror("app", "node1", "node2", arbitrated=True, lease=True, phase=mm.Phase.PRIM)
    m = replace(m, peer=mm.PeerInfo(True, True, mm.Phase.SECOND, fresh=True))
    m, acts = mm.step(m, mm.ReplicaLost("no acknowledgement"), 10.0, "g1")
    assert m.display() == ("ALONE", "transient")
    assert m.confirm_after == 10.0
    m, acts = mm.step(m, mm.Arbiter(True, "lease held", asked=9.9), 10.1, "g2")
    assert not any(isinstance(a, mm.HeldWrites) for a in acts)  # asked before the break
    m, acts = mm.step(m, mm.Arbiter(True, "lease held again", asked=10.05), 10.2, "g3")
    assert mm.HeldWrites(release=True) in acts
    assert m.display() == ("ALONE", "ready")


def test_without_a_witness_a_one_way_split_converges_after_the_heal() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.cut("node1", "node2")  # node2 takes over; node1 still hears it: both primary
    assert sim.states() == ("ALONE ready", "ALONE ready")
    sim.cut("node1", "node2", on=False)
    assert sim.states() == ("PRIM ready", "SECOND ready")  # first-primary stays


def test_a_secondary_that_cannot_start_replication_makes_its_primary_say_unprotected() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.command("node2", C.STOP)
    sim.fail("node2", mm.Op.START_SECOND)  # e.g. its replication port is taken
    sim.command("node2", C.SECOND)
    sim.settle()
    assert sim.states() == ("ALONE ready", "STOP not-ready")
    blocked = sim.nodes["node2"].machine.join_failed
    assert "start_second failed" in blocked
    primary = sim.nodes["node1"].machine
    assert primary.peer.blocked == blocked  # published in node2's heartbeats
    assert mm.unprotected(primary) == f"not replicated: node2 cannot become secondary: {blocked}"
    assert any("not replicated: node2 cannot become secondary" in x for x in sim.log("node1"))
    sim.fail("node2", mm.Op.START_SECOND, on=False)
    sim.command("node2", C.SECOND)
    sim.settle()
    assert sim.states() == ("PRIM ready", "SECOND ready")
    assert mm.unprotected(sim.nodes["node1"].machine) == ""


def test_the_published_blocked_reason_is_bounded() -> None:
    m = mm.Mirror("m", "node2", "node1", phase=mm.Phase.WAITING, blocked="x" * 5000)
    peer = mm.peer_from_wire(True, mm.to_wire(m))
    assert peer.blocked == "x" * MAX_PUBLISHED_REASON
    assert "b" not in mm.to_wire(replace(m, blocked=""))


def test_writes_acknowledged_alone_are_not_lost_when_that_primary_dies_later() -> None:
    """The link between the nodes breaks, the witness confirms node1, which acknowledges writes
    alone; node1 then dies. node2's copy is outdated: the witness must not give it the role."""
    sim = witnessed()
    sim.cuts = {("node1", "node2"), ("node2", "node1")}
    w = sim.write()
    assert w is not None
    assert w in sim.acked
    sim.crash("node1")
    sim.settle()
    assert not sim.lost_writes(), sim.states()
    assert sim.state("node2") == "SECOND transient"
    # node1 comes back once the link is repaired: it has the newer copy. node2 must not sit in
    # its refused takeover (node1 would wait for it "to settle" for ever): it leaves the
    # secondary side, node1 becomes primary and node2 resynchronises from it.
    sim.set_partition(False)
    sim.boot("node1")
    assert sim.states() == ("PRIM ready", "SECOND ready"), sim.log("node2")[-5:]
    assert not sim.lost_writes()


@pytest.mark.parametrize("complete", [True, False])
def test_a_primary_handing_over_keeps_its_generation_when_replication_stopped_in_order(
    complete: bool,
) -> None:
    """A swap: the primary stops its replication in order (everything acknowledged) while it
    demotes. That is no loss: the secondary's copy is not stale, it takes the role. (It was
    taken as one: the generation moved, each node then waited for the other — a deadlock seen
    in the rolling-upgrade lab.) A real break while demoting still makes the copy stale."""
    m = mm.Mirror("app", "node1", "node2", phase=mm.Phase.DEMOTING)
    m = replace(m, peer=mm.PeerInfo(True, True, mm.Phase.SECOND, fresh=True))
    before = m.data
    m, acts = mm.step(m, mm.ReplicaLost("the primary stops", complete=complete), 10.0, "g1")
    assert (m.data == before) is complete
    assert any(isinstance(a, mm.Persist) for a in acts) is not complete
