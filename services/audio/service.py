"""The AudioService gRPC servicer: session streams and the debugging RPCs."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.audio.mixer import SILENCE_DB, Volume, db_to_gain, gain_to_db
from services.audio.session import AudioSession, SessionConfig
from services.audio.sources import SourceConfig
from services.audio.sources.wav import read_format
from services.common import logs, tls
from services.common.server import live_info
from services.common.sessions import (
    BACKEND,
    VM_NAME,
    VM_NAME_RULE,
    DeviceSession,
    OpenGate,
    SessionError,
    SessionServicer,
)
from services.devices import es1370_regs as R
from services.devices.es1370_convert import state_from_proto, state_to_proto

log = logs.get("audio")
PUMP_INTERVAL = 0.01  # device seconds between backend-mode DMA checks (interrupt holds expire on it)


class AudioServicer(SessionServicer, audio_pb2_grpc.AudioServiceServicer):
    id_prefix = "s"
    log = log

    def __init__(self, config: SessionConfig, info: common_pb2.ServiceInfo, gate: OpenGate | None = None) -> None:
        super().__init__(info, gate)
        self.config = config
        self.sessions: dict[str, AudioSession] = {}  # type: ignore[assignment]
        self._capture_info = capture_info(config.source)

    # ------------------------------------------------------------------ the device stream
    def open_session(
        self, session_id: str, opening: audio_pb2.Open, send: Callable[[audio_pb2.BackendMessage], None], peer: str
    ) -> AudioSession:
        state = None
        if opening.HasField("state"):
            try:
                state = state_from_proto(opening.state)
            except ValueError as exc:
                raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"open.state: {exc}") from exc
        return AudioSession(session_id, opening.vm or "vm", opening.mode, state, self.config, send, peer)

    def opened(self, session: DeviceSession) -> audio_pb2.BackendMessage:
        opened = audio_pb2.Opened(
            session_id=session.session_id,
            info=self.info,
            lead_ms=round(self.config.lead * 1000),
            capture=self._capture_info,
        )
        return audio_pb2.BackendMessage(opened=opened)

    def pump_interval(self, session: AudioSession) -> float:
        """Backend mode's DMA engine runs here; a mirrored session's runs in the shim and needs no tick."""
        return self.config.clock.real_seconds(PUMP_INTERVAL) if session.mode == BACKEND else 0.0

    # ------------------------------------------------------------------ debugging RPCs
    async def GetServiceInfo(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ServiceInfo:  # noqa: ANN001
        return live_info(self.info)

    async def GetDeviceState(self, request, context: grpc.aio.ServicerContext) -> audio_pb2.DeviceState:  # noqa: ANN001
        if request.session_id:
            session = self.sessions.get(request.session_id)
        elif len(self.sessions) == 1:
            session = next(iter(self.sessions.values()))
        else:
            session = None
        if session is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no session {request.session_id!r}; open sessions: {sorted(self.sessions)}",
            )
        return device_state(session)

    async def SetVolume(self, request, context: grpc.aio.ServicerContext) -> audio_pb2.VolumeState:  # noqa: ANN001
        mixer = self.config.mixer
        if mixer is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "per-VM volume needs the service's mixer (--mix service); with --mix alsa use the card's mixer",
            )
        target = request.WhichOneof("target")
        if target == "session_id":
            session = self.sessions.get(request.session_id)
            if session is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"no session {request.session_id!r}; open sessions: {sorted(self.sessions)}",
                )
            vm = session.vm
        elif target == "vm":
            vm = request.vm
            if not VM_NAME.fullmatch(vm):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{VM_NAME_RULE} (got {vm[:80]!r})")
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name a session_id or a vm")
        scope = tls.vm_scope()  # a VM's certificate sets its own VM's volume only
        if scope and vm != scope:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, tls.not_in_scope(vm))
        level = request.WhichOneof("level")
        volume = None
        if level == "volume":
            volume = request.volume
            if not 0.0 <= volume <= 1.0:  # also refuses NaN
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"volume {volume} is not within 0..1")
        elif level == "volume_db":
            if not request.volume_db <= 0.0:  # also refuses NaN
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"volume_db {request.volume_db} is above 0 dB")
            volume = db_to_gain(request.volume_db)
        mute = request.mute if request.HasField("mute") else None
        return volume_state(vm, mixer.set_volume(vm, volume, mute))


def volume_state(vm: str, v: Volume) -> audio_pb2.VolumeState:
    db = gain_to_db(v.volume)
    return audio_pb2.VolumeState(vm=vm, volume=v.volume, volume_db=max(db, SILENCE_DB), mute=v.mute)


def device_state(session: AudioSession) -> audio_pb2.DeviceState:
    model = session.model
    views = []
    for channel, name in enumerate(R.CHANNEL_NAMES):
        fmt = model.channel_format(channel)
        stats = session.player_stats(channel)
        moved = stats.bytes_played if stats else session.counters["capture_bytes"] if channel == R.ADC else 0
        ch = model.state.channels[channel]
        views.append(
            audio_pb2.ChannelView(
                name=name,
                enabled=model.channel_running(channel),
                paused=False,
                rate=fmt.rate,
                channels=fmt.channels,
                bits=fmt.bits,
                frame_addr=ch.frame_addr,
                buffer_bytes=model.buffer_bytes(channel),
                position_bytes=model.position_bytes(channel),
                samples_left=(ch.scount >> 16) + 1,
                bytes_played=moved,
            )
        )
    counters = session.playback_counters()
    return audio_pb2.DeviceState(
        session_id=session.session_id,
        raw=state_to_proto(model.state),
        irq=model.irq,
        channels=views,
        underruns=counters["underruns"],
        late_dma=counters["late_dma"],
    )


def capture_info(source: SourceConfig) -> audio_pb2.CaptureSourceInfo:
    """What the shim learns about the capture source when its session opens."""
    info = audio_pb2.CaptureSourceInfo(kind=source.kind, latency_ms=round(source.latency * 1000))
    if source.kind == "wav":
        fmt = read_format(source.path)
        info.rate, info.channels, info.bits = fmt.rate, fmt.channels, fmt.bits
    return info
