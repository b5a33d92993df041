"""A TCP proxy that can stall or cut connections, to make a backend slow or gone on demand."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from support.processes import Server, free_port


class TcpProxy(Server):
    """Forward a free port on 127.0.0.1 to ``target``; ``cut()`` makes the target unreachable.

    While cut, open connections are reset and new ones refused, as when the
    server behind it is down; while stalled, what is sent either way is held
    and nothing is closed, as on a network that drops every packet. ``mend()``
    lets connections and bytes through again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._flowing = threading.Event()
        self._flowing.set()

    def start(self) -> None:
        """Listen and forward."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(('127.0.0.1', self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
            source.close()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close() sends a reset, as a crashed server's host would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                sock.close()

    def stall(self) -> None:
        """Hold what is sent either way, closing nothing."""
        self._flowing.clear()

    def mend(self) -> None:
        """Accept and forward connections and bytes again, on the same port."""
        self._flowing.set()
        if self._listener is None:
            self.start()

    def close(self) -> None:
        """Stop forwarding for good."""
        self.cut()
        self._flowing.set()  # held bytes go nowhere: their sockets are closed
