"""Live denoising from an input device to an output device through PortAudio (sounddevice).

In the default ``worker`` mode the audio callback only copies samples into and out of two
preallocated ring buffers, a bounded amount of work whatever the model costs; a worker thread runs
the engine between them. ``inline`` mode runs the engine inside the callback: lower latency, and
its cost per callback is bounded by the block size (blocksize / hop model steps). Input overflows
and output underflows are counted, from PortAudio's flags and from full/empty rings.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from runtime.engine import Engine


class Ring:
    """Single-producer single-consumer float32 ring buffer with a lock held only for copies."""

    def __init__(self, capacity: int):
        self.buf = np.zeros(capacity, np.float32)
        self.read_pos = self.size = 0
        self.lock = threading.Lock()
        self.data = threading.Event()

    def write(self, x: np.ndarray) -> bool:
        """Append all of ``x``, or nothing when it does not fit (returns False)."""
        n, cap = len(x), len(self.buf)
        with self.lock:
            if self.size + n > cap:
                return False
            start = (self.read_pos + self.size) % cap
            first = min(n, cap - start)
            self.buf[start : start + first] = x[:first]
            self.buf[: n - first] = x[first:]
            self.size += n
        self.data.set()
        return True

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` with up to len(out) samples; returns how many were available."""
        cap = len(self.buf)
        with self.lock:
            n = min(len(out), self.size)
            first = min(n, cap - self.read_pos)
            out[:first] = self.buf[self.read_pos : self.read_pos + first]
            out[first:n] = self.buf[: n - first]
            self.read_pos = (self.read_pos + n) % cap
            self.size -= n
            if not self.size:
                self.data.clear()
        return n


class LiveStream:
    def __init__(self, engine: Engine, device, blocksize: int, mode: str = "worker", seconds: float | None = None):
        import sounddevice as sd

        self.sd, self.engine, self.blocksize, self.mode = sd, engine, blocksize, mode
        self.limit = None if seconds is None else int(seconds * engine.rate)
        self.captured = 0
        self.overflows = self.underflows = 0
        capacity = max(16 * blocksize, engine.rate)  # a second of audio at least
        self.inbox, self.outbox = Ring(capacity), Ring(capacity)
        self.outbox.write(np.zeros(blocksize + 2 * engine.hop, np.float32))  # covers the first blocks' processing
        self.stop = threading.Event()
        self.started = None
        self.stream = sd.Stream(
            device=device,
            samplerate=engine.rate,
            blocksize=blocksize,
            channels=1,
            dtype="float32",
            callback=self._callback,
            finished_callback=self.stop.set,
        )
        self.worker = threading.Thread(target=self._work, daemon=True) if mode == "worker" else None

    def _callback(self, indata, outdata, frames, time_info, status):
        if status.input_overflow:
            self.overflows += 1
        if status.output_underflow:
            self.underflows += 1
        block = indata[:, 0]
        if self.mode == "inline":
            self.outbox.write(self.engine.process(block))
        elif not self.inbox.write(block):
            self.overflows += 1
        got = self.outbox.read_into(outdata[:, 0])
        if got < frames:
            outdata[got:, 0] = 0
            self.underflows += 1
        self.captured += frames
        if self.limit is not None and self.captured >= self.limit:
            raise self.sd.CallbackStop

    def _work(self):
        hop = self.engine.hop
        block = np.zeros(4 * hop, np.float32)
        while not self.stop.is_set():
            if not self.inbox.data.wait(0.05):
                continue
            n = self.inbox.read_into(block)
            if n and not self.outbox.write(self.engine.process(block[:n])):
                self.overflows += 1

    def __enter__(self):
        self.started = time.perf_counter()
        if self.worker:
            self.worker.start()
        self.stream.start()
        return self

    def __exit__(self, *exc):
        self.stream.stop()
        self.stream.close()
        self.stop.set()
        if self.worker:
            self.worker.join(timeout=2)
        return False

    @property
    def active(self) -> bool:
        return self.stream.active and not self.stop.is_set()
