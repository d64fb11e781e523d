"""Runs a real `sluice serve` process for the tests: on port 0 of 127.0.0.1, with its log (stderr) in a temporary file so
the pipe can never fill up and block it.

The binary comes from $SLUICE_BIN (scripts/test.sh sets it), else target/debug/sluice; ONNX Runtime from
$ORT_DYLIB_PATH, else .onnxruntime/libonnxruntime.so.1.31.1 (.cargo/config.toml only applies under cargo).
"""
import contextlib
import os
import signal
import subprocess
import tempfile
import threading

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(REPO, "models")
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
LISTEN_PREFIX = "sluice listening http="


class StartError(Exception):
    pass


def binary_path():
    path = os.environ.get("SLUICE_BIN") or os.path.join(REPO, "target", "debug", "sluice")
    if not os.path.isabs(path):
        path = os.path.join(REPO, path)
    return path


class SluiceServer:
    """One server process. `start()` returns its address "127.0.0.1:PORT"; `stop()` sends SIGTERM, then SIGKILL after
    STOP_GRACE_S seconds, and returns the exit code."""

    def __init__(self, models=MODELS, extra_args=()):
        self.binary = binary_path()
        self.args = [self.binary, "serve", "--models", models, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
                     "--admin", "127.0.0.1:0", "--scaler", "127.0.0.1:0", *extra_args]
        self.proc = None
        self.addr = None
        self.grpc_addr = None
        self.admin_addr = None
        self.scaler_addr = None
        self.stdout_lines = []
        self.log_path = None
        self.killed = False

    def start(self):
        if not os.path.exists(self.binary):
            raise StartError(f"sluice binary not found at {self.binary}: run `cargo build --bin sluice` or set SLUICE_BIN")
        env = dict(os.environ)
        env.setdefault("ORT_DYLIB_PATH", os.path.join(REPO, ".onnxruntime", "libonnxruntime.so.1.31.1"))
        env["NO_COLOR"] = "1"
        log = tempfile.NamedTemporaryFile(prefix="sluice-conformance-", suffix=".log", delete=False)
        self.log_path = log.name
        try:
            self.proc = subprocess.Popen(
                self.args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
            )
        finally:
            log.close()
        first = threading.Event()

        def read_stdout():
            # Keeps draining stdout for the life of the process, so it can never block on a full pipe.
            for line in self.proc.stdout:
                self.stdout_lines.append(line.rstrip("\n"))
                first.set()
            first.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        first.wait(START_TIMEOUT_S)
        line = self.stdout_lines[0] if self.stdout_lines else None
        if not line or not line.startswith(LISTEN_PREFIX):
            try:
                code = self.proc.wait(timeout=1) if line is None and first.is_set() else self.proc.poll()
            except subprocess.TimeoutExpired:
                code = None
            self.stop()
            why = f"it exited with code {code}" if code is not None else f"nothing within {START_TIMEOUT_S:.0f}s"
            raise StartError(
                f"sluice did not print '{LISTEN_PREFIX}ADDR' ({why}; first stdout line {line!r}); "
                f"command: {' '.join(self.args)}; its log:\n{self.log_tail()}"
            )
        # The line is "sluice listening http=ADDR grpc=ADDR admin=ADDR|off scaler=ADDR|off".
        fields = dict(part.split("=", 1) for part in line.split()[2:] if "=" in part)
        self.addr = fields.get("http", "")
        self.grpc_addr = fields.get("grpc", "")
        self.admin_addr = fields.get("admin") if fields.get("admin", "off") != "off" else None
        self.scaler_addr = fields.get("scaler") if fields.get("scaler", "off") != "off" else None
        if not self.addr.startswith("127.0.0.1:"):
            self.stop()
            raise StartError(f"sluice listens on {self.addr}, not on 127.0.0.1")
        return self.addr

    def stop(self):
        """SIGTERM, then SIGKILL if it has not exited after STOP_GRACE_S; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(timeout=STOP_GRACE_S)
        return self.proc.returncode

    def log_tail(self, limit=20000):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except (OSError, TypeError):
            return "<no log>"
        return data[-limit:].decode("utf-8", "replace")

    def remove_log(self):
        if self.log_path:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        if exc[0] is None:
            self.remove_log()
        else:
            print(f"\n==== sluice log ({self.log_path}) ====\n{self.log_tail()}")
        return False


@contextlib.contextmanager
def fixture_server(request, **kwargs):
    """For pytest fixtures: starts a SluiceServer(**kwargs) with its admin port on 127.0.0.1 (a start error fails the
    test with the server's log), yields it, and stops it. Its log is printed if a test failed meanwhile (pytest does not
    raise test failures inside fixtures, so the session's failure count tells), and removed otherwise."""
    import pytest

    srv = SluiceServer(**kwargs)
    try:
        srv.start()
    except StartError as err:
        pytest.fail(str(err), pytrace=False)
    failed_before = request.session.testsfailed
    try:
        assert srv.admin_addr and srv.admin_addr.startswith("127.0.0.1:"), f"admin listens on {srv.admin_addr!r}"
        yield srv
    finally:
        code = srv.stop()
        if request.session.testsfailed > failed_before or srv.killed:
            print(f"\n==== sluice log ({srv.log_path}; exit code {code}) ====\n{srv.log_tail()}")
        else:
            srv.remove_log()
