"""A presenter without any video: frames count as shown when the stage presents them (tests, servers)."""

from __future__ import annotations

from services.display.presenters.base import RenderJob, WindowEvent


class HeadlessPresenter:
    name = "headless"

    def __init__(self) -> None:
        self.renders = 0
        self.notice: str | None = None

    def open(self) -> None:
        pass

    def render(self, job: RenderJob) -> None:
        self.renders += 1

    def show_notice(self, text: str | None) -> None:
        self.notice = text

    def poll_events(self) -> list[WindowEvent]:
        return []

    def close(self) -> None:
        pass
