"""A presenter without any video: frames count as shown when the stage presents them (tests, servers)."""

from __future__ import annotations

from services.display.presenters.base import RenderJob, WindowEvent


class HeadlessPresenter:
    name = "headless"
    has_events = False  # nothing to pump: the stage sleeps until there is work

    def __init__(self) -> None:
        self.renders = 0
        self.notice: str | None = None
        self.titles: dict[int, str] = {}  # what each window would be called

    def open(self) -> None:
        pass

    def render(self, job: RenderJob) -> None:
        self.renders += 1
        self.titles[job.window] = job.title

    def show_notice(self, text: str | None) -> None:
        self.notice = text

    def poll_events(self) -> list[WindowEvent]:
        return []

    def set_title(self, window: int, title: str) -> None:
        self.titles[window] = title

    def close_window(self, window: int) -> None:
        self.titles.pop(window, None)

    def toggle_fullscreen(self, window: int) -> None:
        pass

    def set_grab(self, window: int, grab: bool) -> None:
        pass

    def focus_window(self, window: int) -> None:
        pass

    def close(self) -> None:
        pass
