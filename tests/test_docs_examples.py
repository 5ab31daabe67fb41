"""Every ```python block of docs/*.md and README.md runs, page by page, against a real nats-server.

Each page runs in a fresh Python process (the blocks change process-wide state: hooks, a tracer provider, the
default client), with `BGJOB_URL` pointing at the session's server and `BGJOB_PREFIX` fresh, in a temp dir that
is the current directory and on `sys.path`. The blocks of a page share one namespace, in page order. Markers,
HTML comments the site does not show:

- `<!-- not run: REASON -->` right before a block: the block is skipped (and counted). For what cannot run
  standalone: a Django settings fragment, a worker's `run()` that blocks until SIGTERM.
- `<!-- run: WHAT\\nCODE\\n-->`: hidden code run at that place (a worker started in the background where the
  page says "run a worker, then:"), counted as hidden.
- A block whose first line is `# some/module.py` is written to that path under the temp dir and imported (the
  page's later blocks and its workers import it by that name); its names join the page's namespace.

Run one page by hand: `BGJOB_URL=... python tests/test_docs_examples.py docs/sending.md`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

FENCE = re.compile(r"^(`{3,})(\w*)\s*$")
NOT_RUN = re.compile(r"^<!-- not run: (\S.*?) -->\s*$")
RUN = re.compile(r"^<!-- run: (\S.*)$")
MODULE = re.compile(r"^# ((?:\w+/)*\w+\.py)\b")


@dataclass
class Block:
    line: int  # 1-based line of the block's first code line
    code: str
    kind: str  # "run", "module", "hidden" or "skip"
    reason: str = ""
    module: str = ""


def blocks(text: str) -> list[Block]:
    """The page's python blocks and hidden run comments, in order, each with what to do with it."""
    lines = text.splitlines()
    found: list[Block] = []
    pending_skip = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := NOT_RUN.match(line):
            pending_skip = m.group(1)
            i += 1
            continue
        if m := RUN.match(line):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->")
            found.append(Block(i + 2, "\n".join(lines[i + 1 : end]), "hidden", m.group(1)))
            i = end + 1
            continue
        if m := FENCE.match(line.strip()) if line.lstrip() == line else None:
            fence, lang = m.groups()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == fence)
            code = "\n".join(lines[i + 1 : end])
            if lang == "python":
                if pending_skip:
                    found.append(Block(i + 2, code, "skip", pending_skip))
                elif mm := MODULE.match(code):
                    found.append(Block(i + 2, code, "module", module=mm.group(1)))
                else:
                    found.append(Block(i + 2, code, "run"))
            pending_skip = ""
            i = end + 1
            continue
        if line.strip():
            pending_skip = ""  # a marker applies to the very next block only
        i += 1
    return found


def run_page(page: Path, workdir: Path) -> dict[str, int]:
    """Run `page`'s blocks in this process (the child's side); returns the counts."""
    import importlib

    import bgjob

    started: list[tuple[bgjob.Worker, object]] = []
    original_start = bgjob.Worker.start

    def start(self: bgjob.Worker, *args: object, **kwargs: object) -> object:
        thread = original_start(self, *args, **kwargs)
        started.append((self, thread))
        return thread

    bgjob.Worker.start = start  # type: ignore[method-assign]
    os.chdir(workdir)
    sys.path.insert(0, str(workdir))
    namespace: dict[str, object] = {"__name__": "__docs__"}
    counts = {"run": 0, "module": 0, "hidden": 0, "skip": 0}
    try:
        for block in blocks(page.read_text()):
            counts[block.kind] += 1
            if block.kind == "skip":
                continue
            code = "\n" * (block.line - 1) + block.code  # tracebacks name the page's own line numbers
            if block.kind == "module":
                path = workdir / block.module
                path.parent.mkdir(parents=True, exist_ok=True)
                for parent in path.relative_to(workdir).parents:
                    if parent != Path("."):
                        (workdir / parent / "__init__.py").touch()
                path.write_text(block.code + "\n")
                importlib.invalidate_caches()
                module = importlib.import_module(block.module[:-3].replace("/", "."))
                namespace.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
                continue
            exec(compile(code, str(page), "exec"), namespace)
    finally:
        for worker, _ in started:
            worker.stop()
        for _, thread in started:
            thread.join(30)  # type: ignore[attr-defined]
    return counts


def test_every_python_block_is_marked_or_runs() -> None:
    """The extractor sees each page's blocks; a skipped block always says why."""
    total = {"run": 0, "module": 0, "hidden": 0, "skip": 0}
    for page in PAGES:
        for block in blocks(page.read_text()):
            total[block.kind] += 1
            assert block.kind != "skip" or block.reason.strip(), f"{page.name}:{block.line}: a skip needs a reason"
    assert total["run"] + total["module"] >= 40, total


def _page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


if "pytest" in sys.modules:
    import pytest

    # pages with something to run (the others' skipped blocks are checked above)
    RUNNABLE = [page for page in PAGES if any(b.kind != "skip" for b in blocks(page.read_text()))]

    @pytest.mark.parametrize("page", RUNNABLE, ids=_page_id)
    def test_page_examples_run(page: Path, nats_server: object, prefix: str, tmp_path: Path,
                               record_property: object) -> None:  # fmt: skip
        env = {**os.environ, "BGJOB_URL": nats_server.url, "BGJOB_PREFIX": prefix}  # type: ignore[attr-defined]
        env.pop("DJANGO_SETTINGS_MODULE", None)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        proc = subprocess.run(
            [sys.executable, __file__, str(page), str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=90, cwd=tmp_path,
        )  # fmt: skip
        if proc.returncode != 0:
            pytest.fail(f"{_page_id(page)}:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}", pytrace=False)
        counts = json.loads(proc.stdout.strip().splitlines()[-1])
        record_property("blocks", counts)  # type: ignore[operator]


if __name__ == "__main__":
    page_arg = Path(sys.argv[1]).resolve()
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path.cwd()
    result = run_page(page_arg, work)
    print(json.dumps(result), flush=True)
