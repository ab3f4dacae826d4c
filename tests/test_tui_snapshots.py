"""Layout snapshots (SVG) of the dashboard: large grid, 80x24 tabs, experiment detail, the Slots pane. Update:
--snapshot-update (after looking at the new SVGs)."""

from pathlib import Path

import pytest
from pytest_textual_snapshot import SVGImageExtension

from tests.tui_fixtures import make_app, make_workspace

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class TuiSnapshot(SVGImageExtension):
    """Stored in tests/snapshots/ (one SVG per test)."""

    @classmethod
    def dirname(cls, *, test_location) -> str:
        return str(Path(test_location.filepath).parent / "snapshots")


@pytest.fixture
def svg_snapshot(snapshot):
    return snapshot.use_extension(TuiSnapshot)


async def shot(root, size, keys=()) -> str:
    # fixed clock, fixed path label, static GPU sample, no watcher threads, no animations: deterministic
    app = make_app(root)
    app.animation_level = "none"
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        await pilot.wait_for_scheduled_animations()
        await pilot.pause()
        return app.export_screenshot()


async def test_dashboard_large(tmp_path, svg_snapshot):
    assert await shot(make_workspace(tmp_path / "ws"), (160, 50)) == svg_snapshot


async def test_dashboard_80x24(tmp_path, svg_snapshot):
    assert await shot(make_workspace(tmp_path / "ws"), (80, 24), keys=["right_square_bracket"]) == svg_snapshot


async def test_experiment_detail(tmp_path, svg_snapshot):
    assert await shot(make_workspace(tmp_path / "ws"), (100, 30), keys=["down", "down", "enter"]) == svg_snapshot


async def test_slots_pane(tmp_path, svg_snapshot):
    from tests.tui_fixtures import StaticGpu, parallel_engine
    root = make_workspace(tmp_path / "ws")
    parallel_engine(root, n_slots=3, proposals=2)
    app = make_app(root, gpu_monitor=StaticGpu.gpus(3))
    app.animation_level = "none"
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()
        await pilot.pause()
        assert app.export_screenshot() == svg_snapshot
