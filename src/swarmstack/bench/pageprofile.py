"""Where a page's main thread goes, from Chromium's own records: a V8 CPU profile (which
script functions) and a performance trace (how much CPU each frame's rendering phases take).

Both are read as plain JSON — a profile as ``Profiler.stop`` returns it, a trace as
Playwright's ``browser.stop_tracing`` writes it — so they also serve traces saved by hand.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

# The trace events (thread CPU time, ``tdur``) of one frame's phases on the renderer's main
# thread. Paint and the compositor update may nest; the frame includes them all.
FRAME = "ProxyMain::BeginMainFrame"
PHASES = {
    "raf_script_ms": "PageAnimator::serviceScriptedAnimations",
    "style_ms": "Document::updateStyle",
    "layout_ms": "Layout",
    "prepaint_ms": "LocalFrameView::RunPrePaintLifecyclePhase",
    "paint_ms": "LocalFrameView::RunPaintLifecyclePhase",
    "composite_ms": "PaintArtifactCompositor::Update",
}
_TASKS = ("ThreadControllerImpl::RunTask", "RunTask")


def hot_functions(profile: dict[str, Any], seconds: float, top: int = 10) -> list[dict[str, Any]]:
    """The functions of a V8 CPU profile with the most time, with what they called
    (``total_ms_per_s``) and alone (``self_ms_per_s``), in ms per second of ``seconds``.
    The profiler's own nodes are left out but "(garbage collector)": "(program)", the native
    work (style, layout, paint), is what :func:`frame_costs` breaks down.
    """
    nodes = {n["id"]: n for n in profile["nodes"]}
    parent = {c: n["id"] for n in profile["nodes"] for c in n.get("children", [])}
    own: Counter[int] = Counter()
    samples, deltas = profile.get("samples", []), profile.get("timeDeltas", [])
    for i, node in enumerate(samples[:-1]):  # a sample lasts until the next one
        own[node] += deltas[i + 1] / 1000

    def name(node_id: int) -> tuple[str, str]:
        frame = nodes[node_id]["callFrame"]
        where = f"{frame['url'].rsplit('/', 1)[-1]}:{frame['lineNumber'] + 1}"
        return frame["functionName"] or "(anonymous)", where

    alone: Counter[tuple[str, str]] = Counter()
    total: Counter[tuple[str, str]] = Counter()
    for node_id, ms in own.items():
        alone[name(node_id)] += ms
        callers = set()  # a recursive function counts once
        at: int | None = node_id
        while at is not None:
            callers.add(name(at))
            at = parent.get(at)
        for key in callers:
            total[key] += ms
    rows = [
        {
            "function": fn,
            "where": where,
            "self_ms_per_s": round(alone[fn, where] / seconds, 2),
            "total_ms_per_s": round(ms / seconds, 2),
        }
        for (fn, where), ms in total.most_common()
        if not fn.startswith("(") or fn == "(garbage collector)"
    ]
    return rows[:top]


def frame_costs(trace: Path) -> dict[str, float]:
    """Frames per second, the main thread's CPU ms per second, and each frame's CPU ms in all
    and per phase (averages over the trace)."""
    data = json.loads(trace.read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    main = {key for key, name in threads.items() if name == "CrRendererMain"}
    cpu: Counter[str] = Counter()
    count: Counter[str] = Counter()
    first, last = float("inf"), 0.0
    for e in events:
        if e.get("ph") != "X" or "tdur" not in e or (e["pid"], e["tid"]) not in main:
            continue
        cpu[e["name"]] += e["tdur"] / 1000
        count[e["name"]] += 1
        first, last = min(first, e["ts"]), max(last, e["ts"] + e["dur"])
    span_s = max(last - first, 1.0) / 1e6
    frames = count[FRAME]
    per_frame = {
        key: round(cpu[name] / frames, 2) if frames else 0.0 for key, name in PHASES.items()
    }
    return {
        "frames_per_s": round(frames / span_s, 1),
        "main_thread_cpu_ms_per_s": round(sum(cpu[t] for t in _TASKS) / span_s, 1),
        "frame_cpu_ms": round(cpu[FRAME] / frames, 2) if frames else 0.0,
        **per_frame,
    }
