"""PNG plots of a benchmark run beside the paper's bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

_LINK_ORDER = ("loopback", "100mbit", "1gbit")


def display_ns_per_px(results: list[dict], out: Path) -> Path | None:
    """Table 3 as bars: our ns/px per encoding (desktop and photo content) and the paper's, one panel per link."""
    rows = [r for r in results if r["metric"] == "display_refresh_ns_per_px"]
    links = [name for name in _LINK_ORDER if any(r["link"] == name for r in rows)]
    if not links:
        return None
    local = [r for r in rows if r["mode"] == "local"]
    fig, axes = plt.subplots(1, len(links), figsize=(5.5 * len(links), 4.5), squeeze=False)
    for ax, link in zip(axes[0], links, strict=True):
        mine = [r for r in rows if r["link"] == link] + local
        modes = list(dict.fromkeys(r["mode"] for r in mine))
        for i, content in enumerate(("desktop", "photo")):
            values = [
                next((r["p50"] for r in mine if r["mode"] == m and r.get("content") == content), 0) for m in modes
            ]
            ax.bar([x + (i - 1) * 0.27 for x in range(len(modes))], values, width=0.27, label=f"rdv, {content}")
        paper = [next((r["paper"] for r in mine if r["mode"] == m and r["paper"]), 0) or 0 for m in modes]
        ax.bar([x + 0.27 for x in range(len(modes))], paper, width=0.27, label="paper", color="grey")
        wire = next((r.get("wire_ns_per_px") for r in mine if r.get("wire_ns_per_px")), None)
        if wire:
            ax.axhline(wire, color="red", linestyle="--", linewidth=1, label=f"wire limit {wire:.0f} ns/px")
        ax.set_xticks(range(len(modes)), modes, rotation=35, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("refresh time per pixel (ns, p50)")
        ax.set_title(link)
        ax.legend(fontsize=7)
    fig.suptitle("Display refresh per pixel (paper Table 3)")
    fig.tight_layout()
    path = out / "display_ns_per_px.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def audio_latencies(results: list[dict], out: Path) -> Path | None:
    """Table 2 as bars: p50 per metric and mode on each link, beside the paper's figures."""
    metrics = ("register_read", "register_write", "interrupt", "audio_chunk")
    rows = [r for r in results if r["metric"] in metrics and r["mode"] in ("mirrored", "backend")]
    if not rows:
        return None
    links = [name for name in _LINK_ORDER if any(r["link"] == name for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        labels, ours, paper = [], [], []
        for mode in ("mirrored", "backend"):
            for link in links:
                r = next((r for r in rows if r["metric"] == metric and r["mode"] == mode and r["link"] == link), None)
                if r:
                    labels.append(f"{mode}\n{link}")
                    ours.append(r["p50"] / 1000)
                    paper.append((r["paper"] or 0) / 1000)
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], ours, width=0.4, label="rdv p50")
        ax.bar([i + 0.2 for i in x], paper, width=0.4, label="paper", color="grey")
        ax.set_xticks(list(x), labels, fontsize=6)
        ax.set_yscale("log")
        ax.set_ylabel("µs")
        ax.set_title(metric)
        ax.legend(fontsize=7)
    fig.suptitle("ES1370 (paper Table 2): mirrored = remote card 2, backend = remote card 1")
    fig.tight_layout()
    path = out / "audio_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def video(results: list[dict], out: Path) -> Path | None:
    """#17: fps, Mbit/s, PSNR, SSIM and added latency per clip, link and --video codec (off = the lossless path)."""
    metrics = (("video_fps", "fps"), ("video_mbps", "Mbit/s"), ("video_psnr_db", "dB"), ("video_ssim", "SSIM"),
               ("video_added_latency", "ms"))  # fmt: skip
    rows = [r for r in results if r["metric"].startswith("video_")]
    if not rows:
        return None
    keys = list(dict.fromkeys((r["link"], r["resolution"]) for r in rows))
    keys.sort(key=lambda k: (_LINK_ORDER.index(k[0]) if k[0] in _LINK_ORDER else 9, k[1]))
    codecs = list(dict.fromkeys(r["video"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.2), squeeze=False)
    for ax, (metric, unit) in zip(axes[0], metrics, strict=True):
        for i, codec in enumerate(codecs):
            values = [
                next((r["p50"] for r in rows if r["metric"] == metric and r["video"] == codec
                      and (r["link"], r["resolution"]) == k), 0) for k in keys
            ]  # fmt: skip
            width = 0.8 / len(codecs)
            ax.bar([x + (i - (len(codecs) - 1) / 2) * width for x in range(len(keys))], values, width=width,
                   label=codec)  # fmt: skip
        ax.set_xticks(range(len(keys)), [f"{link}\n{res}" for link, res in keys], fontsize=6)
        ax.set_ylabel(f"{unit} (p50)")
        ax.set_title(metric)
        if metric == "video_mbps":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("Video streams: the synthetic clip, --video off (lossless) vs h264 / jpeg")
    fig.tight_layout()
    path = out / "video.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
