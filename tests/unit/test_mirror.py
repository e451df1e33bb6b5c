"""Mirror state machine: table completeness, and the scenarios users rely on (simulated pair)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hakit.core import mirror as mm
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


def test_partition_without_witness_is_reported_as_split_brain() -> None:
    sim = MirrorSim()
    first_start(sim)
    sim.set_partition(True)
    assert sim.states() == ("ALONE ready", "ALONE ready")
    sim.set_partition(False)
    assert any("SPLIT BRAIN" in line for line in sim.nodes["node1"].log)


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
