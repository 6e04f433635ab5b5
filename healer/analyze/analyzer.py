"""Analyze: a pure function of (knowledge snapshot, new observations, clock reading).

For a batch of observations it decides, against the snapshot that already includes them:

* **lifecycle** of what is open: verification of an action (the component came back, or its
  process died under verification), recovery without action, symptoms that recovered, breakers
  that closed, agent reports that are good again;
* **diagnosis** of new failures: one forward traversal of the dependency graph over the whole
  failing set (:meth:`DependencyGraph.analyze`) splits it into roots and symptoms. A new root
  opens an incident classified by the taxonomy (``knowledge/taxonomy.yaml``); a new symptom joins
  its roots' incidents (``symptom.suppressed``) and gets no remediation of its own; an open
  incident whose component turns out to be a symptom is superseded and joins its root's;
* **settling**: when every root incident of a symptom is closed, the symptom is re-evaluated
  after the settle time (``symptom.settling``, then at the deadline ``symptom.released`` and, if
  it still fails, its own diagnosis).

Repeated observations of an open failure add nothing here: the fold counts them on the open
incident (deduplication). No I/O and no clock of its own: the same snapshot, observations and
``now`` always give the same events, which is what replay relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from healer.analyze.graph import DependencyGraph, RootCauseResult
from healer.analyze.taxonomy import Match, Signature, Taxonomy
from healer.knowledge.events import OBSERVATIONS, Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.projections import ComponentView, FleetState, IncidentView, SymptomView

if TYPE_CHECKING:
    from healer.config import HealerConfig

SETTLE = "settle"  # the "observation" of a symptom re-evaluated after its settle time
DEFAULT_HOST = "localhost"


@dataclass(frozen=True)
class AnalysisSettings:
    settle_time: float = 5.0  # after the last root incident of a symptom closes
    blast_radius_limit: int = 20  # nearest downstream components recorded per diagnosis
    # The longest a dependent waits for a healthy-looking dependency's probes (0: never waits).
    max_dependency_hold: float = 30.0
    # On top of the dependency's detection time: its failure must be recorded before the hold
    # ends (the Monitor's tick, the control loop's batch), or the dependent is diagnosed alone.
    hold_margin: float = 0.25


# How many of a failing component's dependencies, nearest first, a hold-down looks at: enough for
# any real chain of dependencies, bounded for a 100,000-node graph.
HOLD_SCAN = 64
# Probe types that look at the component itself, not through it at its dependencies: their
# failure is the component's own, so it is not held for a dependency.
_OWN_PROBE_TYPES = frozenset({"process", "resources"})
# Process states that say the component itself is hung (as the taxonomy's process-not-running).
_OWN_HANG_STATES = frozenset({"stopped", "tracing-stop", "zombie", "dead"})
# The classes a failure caused by a dependency takes on a component that still looks at it as
# healthy: the component does not answer, or answers that it is broken, with its process alive.
_HOLDABLE_CLASSES = frozenset({"hang", "network_partition", "unhealthy"})


class GraphCache:
    """The dependency graph Analyze decides with: configured edges plus the snapshot's learned ones.

    Building the configured graph is the expensive part (about a second at 100,000 components),
    so it is built once; learned edges are added as the snapshot gains them, in log order. If the
    snapshot was rebuilt without edges this graph already took (a failed append), it starts over
    from the configuration, so the graph is always a function of config + log.
    """

    def __init__(self, depends_on: Mapping[str, Sequence[str]]) -> None:
        self._spec = {name: list(deps) for name, deps in depends_on.items()}
        self.managed = frozenset(self._spec)
        self._graph = DependencyGraph(self._spec)
        self._applied: list[tuple[str, str]] = []

    def for_state(self, state: FleetState) -> DependencyGraph:
        learned = state.learned_edges
        n = len(self._applied)
        if len(learned) < n or (n and learned[n - 1] != self._applied[-1]):
            self._graph = DependencyGraph(self._spec)
            self._applied = []
            n = 0
        for component, dependency in learned[n:]:
            self._graph.add_learned_edge(component, dependency)
            self._applied.append((component, dependency))
        return self._graph


@dataclass
class AnalysisContext:
    """Everything Analyze reads besides the snapshot: derived from configuration only."""

    taxonomy: Taxonomy
    supervised: frozenset[str] = frozenset()
    graph: GraphCache = field(default_factory=lambda: GraphCache({}))
    hosts: Mapping[str, str] = field(default_factory=dict)  # component -> host, where known
    settings: AnalysisSettings = field(default_factory=AnalysisSettings)
    # component -> the longest its probes take to report its failure (config.detection_time);
    # a dependent failing first waits this long for it. Components without one are not waited for.
    detection: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls, config: HealerConfig, taxonomy: Taxonomy, settings: AnalysisSettings | None = None
    ) -> AnalysisContext:
        from healer.config import detection_time  # config's derivations, not Analyze's

        comps = config.components
        supervised = frozenset(n for n, c in comps.items() if c.command is not None)
        hosts: dict[str, str] = {}
        for name, comp in comps.items():
            host = comp.labels.get("host") or (DEFAULT_HOST if name in supervised else None)
            if host is not None:
                hosts[name] = host
        if settings is None:
            analysis = getattr(config, "analysis", None)
            settings = AnalysisSettings(
                settle_time=float(getattr(analysis, "settle_time", AnalysisSettings.settle_time)),
                max_dependency_hold=float(
                    getattr(analysis, "max_dependency_hold", AnalysisSettings.max_dependency_hold)
                ),
            )
        return cls(
            taxonomy,
            supervised,
            GraphCache({n: list(c.depends_on) for n, c in comps.items()}),
            hosts,
            settings,
            {n: t for n, c in comps.items() if (t := detection_time(c)) > 0},
        )


# -- entry points ---------------------------------------------------------------------------------
def analyze(
    state: FleetState,
    ev: RecordedEvent,
    now: float,
    taxonomy: Taxonomy,
    supervised: frozenset[str],
    ctx: AnalysisContext | None = None,
) -> list[Event]:
    """Decisions caused by one event; ``state`` already includes it."""
    if ev.type not in OBSERVATIONS:
        return []
    return analyze_batch(state, [ev], now, ctx or AnalysisContext(taxonomy, supervised))


def analyze_batch(
    state: FleetState, observations: Sequence[RecordedEvent], now: float, ctx: AnalysisContext
) -> list[Event]:
    """Decisions caused by a batch of observations, all already applied to ``state``.

    Which components are roots and which are symptoms does not depend on the order of the
    observations in the batch: the traversal runs once, over the failing set they leave.
    """
    run = _Analysis(state, now, ctx)
    for rec in observations:
        run.observe(rec)
    run.verify_by_probes()
    run.diagnose()
    return run.out


def analyze_deadlines(state: FleetState, now: float, ctx: AnalysisContext | None = None) -> list[Event]:
    """Verification deadlines that passed, and symptoms whose settle time is over."""
    out: list[Event] = []
    closer = _Analysis(state, now, ctx) if ctx is not None else None
    for comp, iid in sorted(state.active_incident.items()):
        inc = state.incidents[iid]
        stable = _stable_for(inc)
        names = _verify_probes(inc)
        if inc.phase == "verifying" and names is not None:
            started = _verify_started(inc)
            passing, _ = _probe_verdict(state.component(comp), names, started)
            if passing is not None:
                if now >= passing + stable:
                    data = _verified_by_probes(state.component(comp), names, passing - started, stable)
                    out.append(Event(T.INCIDENT_VERIFIED, now, comp, iid, data))
                    if closer is not None:
                        closer.close(inc, "remediated", state.position)
                    else:
                        out.append(_resolved_event(inc, now, "remediated", state.position))
                continue  # the named probes pass (and are proving it): the deadline was for that
        elif inc.phase == "verifying" and stable > 0:
            view = state.component(comp)
            last = inc.actions[-1] if inc.actions else None
            finished = inc.opened_at
            if last is not None and last.finished_at is not None:
                finished = last.finished_at
            if view.health == "healthy" and view.health_since is not None:
                since = max(view.health_since, finished)
                if now >= since + stable:
                    out.append(
                        Event(
                            T.INCIDENT_VERIFIED,
                            now,
                            comp,
                            iid,
                            {"verified_after": round(since - finished, 6), "stable_for": stable},
                        )
                    )
                    if closer is not None:
                        closer.close(inc, "remediated", state.position)
                    else:
                        out.append(_resolved_event(inc, now, "remediated", state.position))
                continue  # healthy and proving it: the deadline was for becoming healthy
        if inc.phase == "verifying" and inc.verify_deadline is not None and now >= inc.verify_deadline:
            timeout = (inc.plan or {}).get("verify_timeout")
            reason = f"not healthy within the verification timeout ({timeout}s)"
            if names is not None:
                probes = state.component(comp).probes
                lagging = [f"{n} {probes.get(n, ('unknown', 0.0))[0]}" for n in names]
                reason = f"probes not passing within the verification timeout ({timeout}s): " + ", ".join(
                    x for x in lagging if not x.endswith(" passing")
                )
            out.append(Event(T.VERIFICATION_FAILED, now, comp, iid, {"reason": reason}))
    if closer is not None:
        out.extend(closer.out)
    if ctx is None or not state.symptoms:
        return out
    run = _Analysis(state, now, ctx)
    run.closed.update(closer.closed if closer is not None else {})
    for comp, sv in sorted(state.symptoms.items()):
        if sv.settle_until is None or now < sv.settle_until or run.any_open(sv.incidents):
            continue
        still = comp in state.failing
        roots = ", ".join(sv.roots)
        if sv.hold_down is not None:
            reason = (
                f"{comp} still failing after a {sv.hold_down:.1f}s hold-down while {roots} stayed "
                "healthy: diagnosed on its own"
                if still
                else f"{comp} recovered without action while {roots} stayed healthy"
            )
        else:
            reason = (
                f"{comp} still failing {ctx.settings.settle_time:g}s after {roots} recovered: "
                "diagnosed on its own"
                if still
                else f"{comp} recovered without action after {roots} recovered"
            )
        run.emit(
            T.SYMPTOM_RELEASED,
            comp,
            sv.incidents[-1] if sv.incidents else None,
            {"outcome": "still_failing" if still else "recovered", "roots": list(sv.roots), "reason": reason},
        )
        run.released.add(comp)
        if still:
            run.trigger(comp, SETTLE, None)
    run.diagnose()
    out.extend(run.out)
    return out


# -- the analysis of one batch --------------------------------------------------------------------
class _Analysis:
    """One batch's decisions, with an overlay of what they change that the snapshot cannot show
    yet (incidents closed, symptoms released, incidents opened): the events are applied only
    after the whole batch is decided."""

    def __init__(self, state: FleetState, now: float, ctx: AnalysisContext) -> None:
        self.s = state
        self.now = now
        self.ctx = ctx
        self.tax = ctx.taxonomy
        self.out: list[Event] = []
        self.closed: dict[int, float] = {}  # incident -> when this batch closed it
        self.released: set[str] = set()
        self.opened: dict[str, int] = {}  # component -> incident opened by this batch
        self.opened_ids: set[int] = set()
        self.next_id = state.next_incident
        # component -> (observation type, cause position) of its first trigger in this batch
        self.triggers: dict[str, tuple[str, int | None]] = {}
        self.reports: dict[str, list[RecordedEvent]] = {}
        # component -> why it waits instead of being a root: a dependency that just recovered or
        # is still starting (see _pending_dependency)
        self.late: dict[str, _Pending] = {}
        # component -> its facts and class, worked out to decide a hold and reused if it opens
        self.classified: dict[str, tuple[_LazyFacts, Match | None]] = {}
        # evidence signature -> class: a storm's components mostly fail alike (see _classify)
        self._matches: dict[tuple[Any, ...], Match | None] = {}
        self._names: tuple[str, ...] | None = None
        self._graph: DependencyGraph | None = None
        self._hosts: dict[str, tuple[int, list[str]]] | None = None
        # Components whose probes this batch saw change (-> latest position), for verify.probes.
        self.probed: dict[str, int] = {}
        self.verification_failed: set[int] = set()  # incidents failed by this batch

    # -- overlay reads ------------------------------------------------------------------------
    def active(self, comp: str) -> IncidentView | None:
        inc = self.s.active_for(comp)
        return None if inc is None or inc.id in self.closed else inc

    def symptom(self, comp: str) -> SymptomView | None:
        return None if comp in self.released else self.s.symptoms.get(comp)

    def is_open(self, iid: int) -> bool:
        if iid in self.closed:
            return False
        if iid in self.opened_ids:
            return True
        inc = self.s.incidents.get(iid)
        return inc is not None and self.s.active_incident.get(inc.component) == iid

    def any_open(self, incidents: Sequence[int]) -> bool:
        return any(self.is_open(i) for i in incidents)

    def graph(self) -> DependencyGraph:
        if self._graph is None:
            self._graph = self.ctx.graph.for_state(self.s)
        return self._graph

    def emit(self, etype: str, comp: str, incident: int | None, data: dict[str, Any]) -> None:
        self.out.append(Event(etype, self.now, comp, incident, data))

    def trigger(self, comp: str, observation: str, cause: int | None) -> None:
        # The first observation in the batch is the cause (a process exit, not the failed
        # health check it also caused).
        self.triggers.setdefault(comp, (observation, cause))

    # -- lifecycle, per observation in order ----------------------------------------------------
    def observe(self, rec: RecordedEvent) -> None:
        comp = rec.component
        if comp is None:
            return
        t = rec.type
        if t == T.PROCESS_EXITED:
            if rec.data.get("expected"):
                return
            inc = self.active(comp)
            if inc is not None and inc.phase == "verifying":
                # A process dying under verification fails the attempt.
                self.verification_failed.add(inc.id)
                self.emit(
                    T.VERIFICATION_FAILED,
                    comp,
                    inc.id,
                    {
                        "reason": f"process exited during verification ({_exit_text(rec.data)})",
                        "cause": rec.position,
                    },
                )
            self.trigger(comp, t, rec.position)
        elif t == T.COMPONENT_FAILED:
            self.probed[comp] = rec.position
            inc = self.active(comp)
            if (
                inc is not None
                and inc.phase == "verifying"
                and _stable_for(inc) > 0
                and _verify_probes(inc) is None
                and inc.id not in self.verification_failed
            ):
                # The step's verification asks for a stretch of health: failing again breaks it.
                self.verification_failed.add(inc.id)
                self.emit(
                    T.VERIFICATION_FAILED,
                    comp,
                    inc.id,
                    {
                        "reason": f"failed again before staying healthy for {_stable_for(inc):g}s",
                        "cause": rec.position,
                    },
                )
            self.trigger(comp, t, rec.position)
        elif t == T.COMPONENT_RECOVERED:
            self.probed[comp] = rec.position
            self._recovered(comp, rec)
        elif t in (T.PROBE_TRANSITIONED, T.COMPONENT_BECAME_UNKNOWN):
            self.probed[comp] = rec.position
            if t == T.PROBE_TRANSITIONED and rec.data.get("status") == "failing":
                # One more probe failing on a component that fails already: a new failure if no
                # incident is open for it (after a step verified by other probes).
                self.trigger(comp, t, rec.position)
        elif t == T.BREAKER_TRANSITIONED:
            dep = rec.data.get("dependency")
            if not isinstance(dep, str) or not dep or dep == comp:
                return
            if rec.data.get("state") == "open":
                self.trigger(dep, t, rec.position)
            elif rec.data.get("state") == "closed":
                self._breaker_closed(dep, rec)
            # A learned edge can make the reporter a symptom of the dependency: look again.
            self.trigger(comp, t, rec.position)
        elif t == T.AGENT_REPORTED:
            self.reports.setdefault(comp, []).append(rec)
            self._report_cleared(comp, rec)
            self.trigger(comp, t, rec.position)

    def verify_by_probes(self) -> None:
        """Steps verified by named probes (``verify.probes``), judged on the batch's outcome: all
        named probes pass (with no ``stable_for``), or one fails after the step (with one)."""
        for comp, position in self.probed.items():
            inc = self.active(comp)
            if inc is None or inc.phase != "verifying" or inc.id in self.verification_failed:
                continue
            names = _verify_probes(inc)
            if names is None:
                continue
            view = self.s.component(comp)
            started = _verify_started(inc)
            passing, failed = _probe_verdict(view, names, started)
            stable = _stable_for(inc)
            if failed and stable > 0:
                self.verification_failed.add(inc.id)
                self.emit(
                    T.VERIFICATION_FAILED,
                    comp,
                    inc.id,
                    {
                        "reason": f"probe {', '.join(failed)} failed again before passing for {stable:g}s",
                        "cause": position,
                    },
                )
            elif passing is not None and stable == 0:
                data = _verified_by_probes(view, names, self.now - started, 0.0)
                self.emit(T.INCIDENT_VERIFIED, comp, inc.id, {"cause": position, **data})
                self.close(inc, "remediated", position)
                # What else this batch saw of the component was seen while the incident was open.
                if self.triggers.get(comp, (None, None))[0] != T.PROCESS_EXITED:
                    self.triggers.pop(comp, None)

    def _recovered(self, comp: str, rec: RecordedEvent) -> None:
        sv = self.symptom(comp)
        if sv is not None:
            open_ids = [i for i in sv.incidents if self.is_open(i)]
            if open_ids:
                where = f"incident {', '.join(map(str, open_ids))} still open"
            elif sv.hold_down is not None:
                where = f"during its hold-down, {', '.join(sv.roots)} healthy"
            else:
                where = "root recovered"
            self.emit(
                T.SYMPTOM_RELEASED,
                comp,
                sv.incidents[-1] if sv.incidents else None,
                {
                    "outcome": "recovered",
                    "roots": list(sv.roots),
                    "cause": rec.position,
                    "reason": f"{comp} recovered without action ({where})",
                },
            )
            self.released.add(comp)
        inc = self.active(comp)
        if inc is None:
            return
        if inc.phase == "verifying" and (_stable_for(inc) > 0 or _verify_probes(inc) is not None):
            # verified by analyze_deadlines once it has stayed healthy long enough, or by the
            # probes the step names (verify_by_probes)
            return
        if inc.phase == "verifying":
            step = inc.actions[-1] if inc.actions else None
            took = self.now - step.finished_at if step is not None and step.finished_at is not None else None
            self.emit(T.INCIDENT_VERIFIED, comp, inc.id, {"cause": rec.position, "verified_after": took})
            self.close(inc, "remediated", rec.position)
        elif inc.phase == "acting":
            return  # the action in flight decides; its own verification follows
        elif inc.evidence.get("observation") == T.AGENT_REPORTED or comp in self.s.open_breakers_on:
            return  # passing probes do not cure reported corruption, nor close dependents' breakers
        else:
            escalated = inc.status == "escalated"
            self.close(
                inc, "recovered after escalation" if escalated else "recovered without action", rec.position
            )

    def _breaker_closed(self, dep: str, rec: RecordedEvent) -> None:
        """The last open breaker on a dependency closed and the dependency passes its own checks:
        its outage is over without action (unless an action is under way and will verify)."""
        if dep in self.s.open_breakers_on or dep in self.s.failing:
            return
        inc = self.active(dep)
        if inc is None or inc.phase in ("acting", "verifying"):
            return
        reporter = rec.component
        self.close(inc, f"breakers closed ({reporter} reports {dep} working again)", rec.position)

    def _report_cleared(self, comp: str, rec: RecordedEvent) -> None:
        """An agent-reported condition (quality, corruption) reported good again ends its incident."""
        inc = self.active(comp)
        kind = rec.data.get("kind")
        if inc is None or inc.evidence.get("report_kind") != kind or inc.phase in ("acting", "verifying"):
            return
        match = self.tax.classify(self._report_facts(comp, rec))
        if match is None or match.name != inc.failure_class:
            value = rec.data.get("value")
            self.close(inc, f"agent reports {kind} {value!r}: condition cleared", rec.position)

    def close(self, inc: IncidentView, resolution: str, cause: int | None, settle: bool = True) -> None:
        self.emit(
            T.INCIDENT_RESOLVED,
            inc.component,
            inc.id,
            {"resolution": resolution, "cause": cause, "rto_achieved": round(self.now - inc.opened_at, 6)},
        )
        self.closed[inc.id] = self.now
        if not settle:
            return
        # Symptoms whose every root incident is now closed are looked at again after settling.
        settle_s = self.ctx.settings.settle_time
        for name in inc.symptoms:
            sv = self.symptom(name)
            if sv is None or inc.id not in sv.incidents or self.any_open(sv.incidents):
                continue
            self.emit(
                T.SYMPTOM_SETTLING,
                name,
                inc.id,
                {
                    "roots": list(sv.roots),
                    "settle_until": self.now + settle_s,
                    "settle_s": settle_s,
                    "reason": f"{inc.component} recovered: {name} is re-evaluated in {settle_s:g}s",
                },
            )

    # -- diagnosis of new failures: one traversal over the failing set ---------------------------
    def diagnose(self) -> None:
        if not self.triggers:
            return
        s = self.s
        new: list[str] = []
        reported: dict[str, tuple[Match, RecordedEvent]] = {}
        for comp in self.triggers:
            if self.active(comp) is not None or self.symptom(comp) is not None:
                continue  # a repeat of a failure already handled: the fold extends its incident
            for rec in reversed(self.reports.get(comp, [])):
                match = self.tax.classify(self._report_facts(comp, rec))
                if match is not None:
                    reported[comp] = (match, rec)
                    break
            if comp in reported or comp in s.failing or comp in s.open_breakers_on:
                new.append(comp)
        if not new and not self._any_merge_candidate():
            return
        failed = set(s.failing)
        failed.update(c for c, i in s.active_incident.items() if i not in self.closed)
        failed.update(c for c in s.symptoms if c not in self.released)
        failed.update(s.open_breakers_on)
        failed.update(reported)
        graph = self.graph()
        result = graph.analyze(failed)
        merges = self._merges(result)

        # Agent-reported conditions are the agent's own: never a symptom of anything.
        roots = sorted(c for c in new if c in reported or c in result.roots)
        symptoms = sorted(c for c in new if c not in reported and c in result.symptoms)
        for comp in roots:
            # A component re-evaluated after settling waits no more: it is diagnosed now.
            if comp not in reported and self.triggers.get(comp, (None, None))[0] != SETTLE:
                found = self._pending_dependency(comp, graph, failed, result)
                if found is not None:
                    self.late[comp] = found
        roots = [c for c in roots if c not in self.late]
        # Roots of the new symptoms (and of superseded incidents) that have no incident get one.
        needing = {
            r
            for x in (*symptoms, *merges)
            for r in result.symptoms[x]
            if self.active(r) is None and self.symptom(r) is None and r not in roots and r not in self.late
        }
        roots = sorted({*roots, *needing})
        for comp in roots:
            self.opened[comp] = self.next_id
            self.opened_ids.add(self.next_id)
            self.next_id += 1

        attached = {x: self._targets(result.symptoms[x]) for x in (*symptoms, *merges)}
        existing = [
            x
            for x in sorted(s.symptoms)
            if x not in self.released and x in result.symptoms and x not in attached
        ]
        for x in existing:
            attached[x] = self._targets(result.symptoms[x])
        # Each new root's group, in one pass over the new symptoms (not one per root: a storm
        # of unrelated failures has a thousand roots).
        groups: dict[str, list[str]] = {}
        for x in sorted({*symptoms, *merges}):
            for root in result.symptoms[x]:
                groups.setdefault(root, []).append(x)
        for comp in roots:
            self._open_incident(comp, reported.get(comp), groups.get(comp, []), graph, result, failed)
        for x in merges:
            ids, _ = attached[x]
            open_ids = [i for i in ids if self.is_open(i)]
            if not open_ids:
                continue  # its roots are only settling symptoms: keep its own incident
            inc = self.active(x)
            assert inc is not None
            via = ", ".join(sorted(result.symptoms[x]))
            self.emit(
                T.INCIDENT_RESOLVED,
                x,
                inc.id,
                {
                    "resolution": f"superseded: symptom of {via} (incident {', '.join(map(str, open_ids))})",
                    "merged_into": open_ids,
                    "cause": self.triggers.get(x, (None, None))[1],
                    "rto_achieved": round(self.now - inc.opened_at, 6),
                },
            )
            self.closed[inc.id] = self.now
            self._suppress(x, result, failed, graph)
        for x in symptoms:
            self._suppress(x, result, failed, graph)
        for x in existing:
            ids, _ = attached[x]
            sv = s.symptoms[x]
            added = [i for i in ids if i not in sv.incidents and self.is_open(i)]
            if added:
                self._suppress(x, result, failed, graph, only=added)
        for comp, pending in sorted(self.late.items()):
            self._suppress_late(comp, pending, failed)

    def _mergeable(self, iid: int) -> bool:
        """An open incident the traversal may turn into a symptom (not an agent report)."""
        if iid in self.closed:
            return False
        return self.s.incidents[iid].evidence.get("observation") != T.AGENT_REPORTED

    def _any_merge_candidate(self) -> bool:
        return bool(self.triggers) and any(self._mergeable(i) for i in self.s.active_incident.values())

    def _merges(self, result: RootCauseResult) -> list[str]:
        """Open incidents whose component the traversal found to be a symptom: looked up from
        the symptoms (few), not by scanning every open incident on every batch."""
        active = self.s.active_incident
        return sorted(
            x for x in result.symptoms if (iid := active.get(x)) is not None and self._mergeable(iid)
        )

    def _targets(self, roots: frozenset[str]) -> tuple[list[int], float | None]:
        """The incidents a symptom of ``roots`` joins, and its settle deadline if none is open."""
        ids: list[int] = []
        settle: list[float] = []
        for root in sorted(roots):
            if root in self.opened:
                ids.append(self.opened[root])
                continue
            inc = self.active(root)
            if inc is not None:
                ids.append(inc.id)
                continue
            sv = self.symptom(root)
            if sv is not None:
                # The root is itself a symptom whose roots recovered: inherit its settling.
                ids.extend(i for i in sv.incidents if i not in ids)
                if sv.settle_until is not None:
                    settle.append(sv.settle_until)
            elif root in self.late:
                pending = self.late[root]
                if pending.incident is not None and pending.incident not in ids:
                    ids.append(pending.incident)
                settle.append(pending.settle_until)
        if any(self.is_open(i) for i in ids):
            return ids, None
        return ids, max(settle) if settle else self.now + self.ctx.settings.settle_time

    def _pending_dependency(
        self, comp: str, graph: DependencyGraph, failed: set[str], result: RootCauseResult
    ) -> _Pending | None:
        """A direct dependency that is not yet known to be healthy, so ``comp`` failing now is most
        likely its symptom, not a root: one whose incident closed less than the settle time ago
        (its dependents lag behind its recovery), or a supervised one whose process (re)started
        and has not passed its probes yet (its dependents fail while it starts). ``comp`` then
        waits one settle time; if it still fails, it is diagnosed on its own. Failing that, a
        dependency that looks healthy but may not have noticed yet (see :meth:`_hold`)."""
        if comp not in graph:
            return None
        settle = self.ctx.settings.settle_time
        for dep in sorted(graph.dependencies(comp)):
            view = self.s.components.get(dep)
            if dep in failed or view is None:
                continue
            inc = self.s.incidents.get(view.last_incident) if view.last_incident is not None else None
            if inc is not None:
                closed_at = self.closed.get(inc.id, inc.resolved_at if inc.status == "resolved" else None)
                if closed_at is not None and self.now - closed_at < settle:
                    why = f"{dep} recovered {self.now - closed_at:.1f}s ago (incident {inc.id})"
                    return _Pending(dep, inc.id, closed_at + settle, why)
            if dep in self.ctx.supervised and view.process_running and view.health == "unknown":
                since = view.health_since if view.health_since is not None else self.now
                why = f"{dep} is starting (up {self.now - since:.1f}s, not yet healthy)"
                return _Pending(dep, None, self.now + settle, why)
        return self._hold(comp, graph, failed, result)

    def _hold(
        self, comp: str, graph: DependencyGraph, failed: set[str], result: RootCauseResult
    ) -> _Pending | None:
        """The hold-down. ``comp`` fails while its process is alive (it does not answer, or
        answers that it is broken) and its dependencies look healthy: their probes may simply
        not have noticed yet (a dependency that hangs takes ``failure_threshold`` timed-out
        checks to be seen, its dependents' calls into it may fail sooner). Restarting ``comp``
        would be the liveness cascade, so it waits for the slowest of those dependencies'
        worst-case detection times (nearest :data:`HOLD_SCAN` of them, healthy ones only, capped
        by ``max_dependency_hold``); the daemon wakes their probes meanwhile. If one fails in
        time, ``comp`` is its symptom; if not, ``comp`` is diagnosed on its own at the end."""
        settings = self.ctx.settings
        detection = self.ctx.detection
        if not detection or settings.max_dependency_hold <= 0 or not self._holdable(comp, result, failed):
            return None
        comps = self.s.components
        seen = {comp}
        frontier = [comp]
        watched: list[tuple[float, str]] = []
        while frontier and len(seen) <= HOLD_SCAN:
            nearer: list[str] = []
            for node in frontier:
                for dep in sorted(graph.dependencies(node)):
                    if dep in seen or len(seen) > HOLD_SCAN:
                        continue
                    seen.add(dep)
                    view = comps.get(dep)
                    # Only a healthy one may be about to fail; an unknown one cannot be judged.
                    if dep in failed or view is None or view.health != "healthy":
                        continue
                    nearer.append(dep)
                    took = detection.get(dep, 0.0)
                    if took > 0:
                        watched.append((took, dep))
            frontier = nearer
        if not watched:
            return None
        slowest = max(t for t, _ in watched)
        dep = next(d for t, d in watched if t == slowest)  # the nearest of the slowest
        hold = min(slowest + settings.hold_margin, settings.max_dependency_hold)
        names = sorted(d for _, d in watched)
        others = [d for d in names if d != dep]
        why = f"{dep} still looks healthy but its probes need up to {slowest:.1f}s to notice a failure"
        if others:
            why += f" (also waiting on {', '.join(others)})"
        why += ": held for its verdict"
        return _Pending(dep, None, self.now + hold, why, hold, tuple(names))

    def _holdable(self, comp: str, result: RootCauseResult, failed: set[str]) -> bool:
        """Whether ``comp``'s failure may be a dependency's seen first: its probes fail while its
        process is alive and running, and no check of the component itself (its process, its
        resources) fails -- not a crash, a stopped process, exhaustion or flapping."""
        observation = self.triggers.get(comp, (None, None))[0]
        if observation in (T.PROCESS_EXITED, SETTLE) or comp not in self.s.failing:
            return False
        lazy = self._facts(comp, observation, [], result, failed)
        facts = lazy.facts
        if facts["process_status"] in _OWN_HANG_STATES or not _OWN_PROBE_TYPES.isdisjoint(
            facts["failing_probe_types"]
        ):
            return False
        match = self._classify(comp, lazy)
        self.classified[comp] = (lazy, match)
        return match is not None and match.name in _HOLDABLE_CLASSES

    # -- events ---------------------------------------------------------------------------------
    def _open_incident(
        self,
        comp: str,
        report: tuple[Match, RecordedEvent] | None,
        group: list[str],
        graph: DependencyGraph,
        result: RootCauseResult,
        failed: set[str],
    ) -> None:
        iid = self.opened[comp]
        observation, cause = self.triggers.get(comp, (None, None))
        match: Match | None
        if report is not None:
            match, rec = report
            facts: dict[str, Any] = self._report_facts(comp, rec)
            observation, cause = rec.type, rec.position
        else:
            known = self.classified.get(comp)
            if known is not None:
                lazy, match = known
            else:
                lazy = self._facts(comp, observation, [], result, failed)
                match = self._classify(comp, lazy)
            facts = lazy.computed()
        if observation is None:
            # A root found only because symptoms point at it (a breaker-suspected dependency).
            observation = "dependency_of_failing"
            facts["observation"] = observation
        evidence = _evidence(facts)
        failure_class = match.name if match is not None else "unclassified"
        if match is not None:
            evidence["signature"] = match.signature.id
        why = match.signature.why if match is not None else "no taxonomy signature matched"
        limit = self.ctx.settings.blast_radius_limit
        blast, complete = graph.downstream_bounded(comp, limit) if comp in graph else ([], True)
        self.emit(
            T.INCIDENT_DETECTED,
            comp,
            iid,
            # The full evidence is in the diagnosis, right after: here only what was seen.
            {"cause": cause, "observation": observation, "evidence": _summary(evidence)},
        )
        self.emit(
            T.INCIDENT_DIAGNOSED,
            comp,
            iid,
            {
                "failure_class": failure_class,
                "description": match.failure_class.description if match is not None else why,
                "signature": match.signature.id if match is not None else None,
                "root_cause": comp,
                "symptoms": group,
                "blast_radius": blast,
                "blast_radius_complete": complete,
                "evidence": evidence,
                "summary": f"{comp}: {failure_class} ({why})",
            },
        )

    def _suppress(
        self,
        comp: str,
        result: RootCauseResult,
        failed: set[str],
        graph: DependencyGraph,
        only: list[int] | None = None,
    ) -> None:
        roots = sorted(result.symptoms[comp])
        ids, settle_until = self._targets(result.symptoms[comp])
        if only is not None:
            ids = only
        deps = sorted(graph.dependencies(comp) & failed) if comp in graph else []
        observation, cause = self.triggers.get(comp, (None, None))
        lazy = self._facts(comp, observation, deps, result, failed)
        # Not memoised: each symptom names its own failing dependencies (a key per symptom), and
        # the taxonomy's failing-dependency signature comes early.
        match = lazy.classify(self.tax)
        evidence = _evidence(lazy.computed())
        if match is not None:
            evidence["signature"] = match.signature.id
        data: dict[str, Any] = {
            "roots": roots,
            "incidents": ids,
            "failure_class": match.name if match is not None else "unclassified",
            "evidence": evidence,
            "cause": cause,
            "reason": f"remediation of {comp} suppressed: symptom of {', '.join(roots)}, "
            f"incident {', '.join(map(str, ids))}",
        }
        if settle_until is not None:
            data["settle_until"] = settle_until
        held = self.symptom(comp)
        if held is not None and held.hold_down is not None:
            # Its hold-down ends here: say so on the root's incident (its postmortem starts at
            # the root's failure, after the hold began).
            data["held_for_s"] = round(self.now - held.since, 6)
            data["reason"] += (
                f" (held {self.now - held.since:.1f}s of its {held.hold_down:.1f}s hold-down "
                f"until {', '.join(roots)} failed)"
            )
        self.emit(T.SYMPTOM_SUPPRESSED, comp, ids[0] if ids else None, data)

    def _suppress_late(self, comp: str, pending: _Pending, failed: set[str]) -> None:
        observation, cause = self.triggers.get(comp, (None, None))
        known = self.classified.get(comp) if pending.hold is not None else None
        if known is not None:
            # Held for a dependency that still looks healthy: the evidence is its own, as seen.
            lazy, match = known
        else:
            # Its dependency is not available (yet): that is the failing dependency it shows.
            lazy = self._facts(comp, observation, [pending.dependency], None, failed)
            match = self._classify(comp, lazy)
        evidence = _evidence(lazy.computed())
        evidence["pending_dependency"] = pending.dependency
        ids = [pending.incident] if pending.incident is not None else []
        data: dict[str, Any] = {
            "roots": [pending.dependency],
            "incidents": ids,
            "failure_class": match.name if match is not None else "unclassified",
            "evidence": evidence,
            "cause": cause,
            "settle_until": pending.settle_until,
            "late": True,
            "reason": f"remediation of {comp} suppressed: {pending.why}; "
            f"re-evaluated in {pending.settle_until - self.now:.1f}s",
        }
        if pending.hold is not None:
            data["hold_down_s"] = round(pending.hold, 6)
            data["wake"] = list(pending.wake)  # the dependencies whose probes the daemon runs now
        self.emit(T.SYMPTOM_SUPPRESSED, comp, pending.incident, data)

    # -- facts ----------------------------------------------------------------------------------
    def _classify(self, comp: str, lazy: _LazyFacts) -> Match | None:
        """``lazy``'s class, memoised per batch on the values of the facts the taxonomy's
        signatures read: a storm's thousand components mostly fail with the same evidence, and
        matching the signatures was a third of Analyze's time per root. Sound because a
        signature reads nothing but facts: the same values give the same first match. The peer
        facts (per host and per failing set) are not in the key, so a result is kept only if
        they were not needed, or are known to be empty (no host)."""
        if self._names is None:
            self._names = _key_names(self.tax)
        key = _signature_key(self._names, lazy.facts)
        if key is not None:
            known = self._matches.get(key, _UNKNOWN)
            if known is not _UNKNOWN:
                return known  # type: ignore[return-value]
        match = lazy.classify(self.tax)
        if key is not None and (not lazy.computed_lazy or self.ctx.hosts.get(comp) is None):
            self._matches[key] = match
        return match

    def _report_facts(self, comp: str, rec: RecordedEvent) -> dict[str, Any]:
        d = rec.data
        return {
            "observation": rec.type,
            "supervised": comp in self.ctx.supervised,
            "managed": comp in self.ctx.graph.managed,
            "report_kind": d.get("kind"),
            "report_value": d.get("value"),
            "report_detail": d.get("detail"),
        }

    def _facts(
        self,
        comp: str,
        observation: str | None,
        failing_deps: list[str],
        result: RootCauseResult | None,
        failed: set[str],
    ) -> _LazyFacts:
        s = self.s
        c = s.component(comp)
        tax = self.tax
        supervised = comp in self.ctx.supervised
        probes = c.evidence.get("probes")
        if not isinstance(probes, dict):
            probes = {}
        failing_names: list[str] = []
        types_seen: set[str] = set()
        values_seen: list[dict[str, Any]] = []
        process_status = None
        for name, p in probes.items():
            if not isinstance(p, dict):
                continue
            kind = p.get("type")
            if kind == "process" and isinstance(p.get("values"), dict):
                process_status = p["values"].get("status")
            if p.get("status") == "failing":
                failing_names.append(name)
                types_seen.add(str(kind))
                if isinstance(p.get("values"), dict):
                    values_seen.append(p["values"])
        sampled = c.evidence.get("process")
        if isinstance(sampled, dict) and isinstance(sampled.get("status"), str):
            # Read by the Monitor the moment the component failed; a process probe's value may
            # be an interval older, and most components have no process probe at all.
            process_status = sampled["status"]
        failing_names.sort()
        types = sorted(types_seen)
        network = tax.network_probe_types
        window_start = self.now - tax.transition_window
        facts: dict[str, Any] = {
            "observation": observation,
            "supervised": supervised,
            "managed": comp in self.ctx.graph.managed,
            "process_alive": c.process_running if supervised else None,
            "process_status": process_status,
            "health": c.health,
            "failing_probes": failing_names,
            "failing_probe_types": types,
            "network_probes_failing": not types_seen.isdisjoint(network),
            "local_probes_failing": not types_seen.isdisjoint(tax.local_probe_types),
            "only_network_probes_failing": bool(types_seen) and types_seen <= network,
            "transitions": sum(1 for ts in c.transitions if ts > window_start),
            "open_breakers": len(s.open_breakers_on.get(comp, ())),
            "failing_dependencies": failing_deps,
            "probes": probes,
        }
        if supervised and not c.process_running and c.last_exit is not None:
            for key in ("exit_code", "signal", "pid"):
                if key in c.last_exit:
                    facts[key] = c.last_exit[key]
        for values in values_seen:
            for key, value in values.items():
                facts.setdefault(f"values.{key}", value)
        reporters = s.open_breakers_on.get(comp)
        if reporters:
            facts["breakers"] = {
                r: s.components[r].breakers.get(comp, {}) for r in sorted(reporters) if r in s.components
            }
        return _LazyFacts(facts, _PEER_FACTS, self._peers(comp, result))

    def _peers(self, comp: str, result: RootCauseResult | None) -> Callable[[], dict[str, Any]]:
        def compute() -> dict[str, Any]:
            host = self.ctx.hosts.get(comp)
            if host is None:
                return {"peers_healthy": None, "peers_failing": None, "peers_healthy_ratio": None}
            if self._hosts is None:
                self._hosts = self._count_hosts()
            healthy, failing = self._hosts.get(host, (0, []))
            if self.s.component(comp).health == "healthy":
                healthy -= 1
            # Its own symptoms fail because of it: they say nothing about the host's network.
            symptoms = result.symptoms if result is not None else {}
            bad = sum(1 for x in failing if x != comp and comp not in symptoms.get(x, ()))
            ratio = healthy / (healthy + bad) if healthy + bad else None
            return {"peers_healthy": healthy, "peers_failing": bad, "peers_healthy_ratio": ratio}

        return compute

    def _count_hosts(self) -> dict[str, tuple[int, list[str]]]:
        counts: dict[str, tuple[int, list[str]]] = {}
        comps = self.s.components
        failing = self.s.failing
        for name, host in self.ctx.hosts.items():
            healthy, bad = counts.get(host, (0, []))
            view = comps.get(name)
            if name in failing:
                bad.append(name)
            elif view is not None and view.health == "healthy":
                healthy += 1
            counts[host] = (healthy, bad)
        return counts


_PEER_FACTS = frozenset({"peers_healthy", "peers_failing", "peers_healthy_ratio"})


@dataclass(frozen=True)
class _Pending:
    dependency: str
    incident: int | None  # the dependency's incident that just closed, if that is the reason
    settle_until: float
    why: str
    hold: float | None = None  # a hold-down for a healthy-looking dependency's verdict: its length
    wake: tuple[str, ...] = ()  # the dependencies it waits on


class _LazyFacts:
    """Facts as a plain dict (signatures read it thousands of times per storm), with the few
    expensive ones (peer counts, O(components)) added only before the first signature that
    reads them."""

    def __init__(
        self, facts: dict[str, Any], lazy: frozenset[str], compute: Callable[[], dict[str, Any]]
    ) -> None:
        self.facts = facts
        self._lazy = lazy
        self._compute: Callable[[], dict[str, Any]] | None = compute

    @property
    def computed_lazy(self) -> bool:
        return self._compute is None

    def before(self, sig: Signature) -> None:
        if self._compute is not None and not sig.uses.isdisjoint(self._lazy):
            self.facts.update(self._compute())
            self._compute = None

    def classify(self, taxonomy: Taxonomy) -> Match | None:
        return taxonomy.classify(self.facts, self.before)

    def computed(self) -> dict[str, Any]:
        return self.facts


_UNKNOWN = object()


def _key_names(taxonomy: Taxonomy) -> tuple[str, ...]:
    """The facts the taxonomy's signatures read, but the peer facts (lazy, per component)."""
    return tuple(sorted(set().union(*(sig.uses for sig in taxonomy.signatures)) - _PEER_FACTS))


def _signature_key(names: tuple[str, ...], facts: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The values of the facts ``names`` (lists as tuples), with their types (``True == 1``),
    or None if one of them cannot be a key (a mapping): such facts are classified every time."""
    values = list(map(facts.get, names))
    for i, value in enumerate(values):
        if type(value) is list:
            values[i] = tuple(value)
    key = (*values, *map(type, values))
    try:
        hash(key)
    except TypeError:
        return None
    return key


_SUMMARY = ("observation", "health", "process_alive", "failing_probes", "signal", "exit_code", "report_kind")


def _evidence(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The facts worth recording: absent (null) and empty ones say nothing."""
    return {k: v for k, v in facts.items() if v is not None and v != []}


def _summary(evidence: Mapping[str, Any]) -> dict[str, Any]:
    return {k: evidence[k] for k in _SUMMARY if k in evidence}


def _exit_text(data: Any) -> str:
    if "signal" in data:
        return f"killed by {data['signal']}"
    if "exit_code" in data:
        return f"exit status {data['exit_code']}"
    return "exited"


def _verify_probes(inc: IncidentView) -> list[str] | None:
    """The probes the step's verification judges by (the policy's verify.probes), or None: all."""
    names = (inc.plan or {}).get("verify_probes")
    if not isinstance(names, list) or not names:
        return None
    return [str(n) for n in names]


def _verify_started(inc: IncidentView) -> float:
    """When the step's verification began: the end of its last action."""
    last = inc.actions[-1] if inc.actions else None
    if last is not None and last.finished_at is not None:
        return last.finished_at
    return inc.opened_at


def _probe_verdict(
    view: ComponentView, names: Sequence[str], started: float
) -> tuple[float | None, list[str]]:
    """Since when every named probe passes (not before ``started``; None if one does not), and
    the named probes that turned failing after ``started``."""
    since: float | None = started
    failed: list[str] = []
    for name in names:
        status, at = view.probes.get(name, ("unknown", started))
        if status == "passing":
            since = None if since is None else max(since, at)
            continue
        since = None
        if status == "failing" and at >= started:
            failed.append(name)
    return since, failed


def _verified_by_probes(
    view: ComponentView, names: Sequence[str], after: float, stable: float
) -> dict[str, Any]:
    data: dict[str, Any] = {"verified_after": round(max(0.0, after), 6), "probes": list(names)}
    if stable:
        data["stable_for"] = stable
    others = sorted(n for n, (status, _) in view.probes.items() if n not in names and status == "failing")
    if others:
        data["still_failing"] = others  # not this step's to judge; the component is still failing
    return data


def _stable_for(inc: IncidentView) -> float:
    """How long the component must stay healthy after the step (the policy's verify.stable_for)."""
    return float((inc.plan or {}).get("verify_stable_for") or 0)


def _resolved_event(inc: IncidentView, now: float, resolution: str, cause: int) -> Event:
    return Event(
        T.INCIDENT_RESOLVED,
        now,
        inc.component,
        inc.id,
        {"resolution": resolution, "cause": cause, "rto_achieved": round(now - inc.opened_at, 6)},
    )
