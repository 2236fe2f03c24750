"""The Ctrl-C design of surgery/core/interrupts.py on any Python, without torch: a copy of Patch's
structure (apply is __enter__, revert is __exit__, the `released` local, settle) over a list of
"weights", stressed with SIGINTs at random instants into nested `with` blocks; after each, the
weights, the stack, the lock and SIGINT's handler must be as before.

    for v in 3.10 3.11 3.12 3.13; do python$v scripts/interrupt_semantics.py surgery/core/interrupts.py 3000; done
    python scripts/interrupt_semantics.py surgery/core/interrupts.py 1500 --wrapped   # __exit__ as a wrapper: fails

The design relies on CPython details (where the interpreter checks for signals); this shows they
hold on each version without installing the project there. tests/test_patch_interrupts.py
stresses the real Patch.
"""
import importlib.util, random, signal, sys, threading, time
spec = importlib.util.spec_from_file_location("interrupts", sys.argv[1])
interrupts = importlib.util.module_from_spec(spec); spec.loader.exec_module(interrupts)
critical = interrupts.critical

WEIGHTS = list(range(200)); ORIGINAL = list(WEIGHTS); STACK = []; LOCK = threading.RLock()

class FakePatch:
    def __init__(self, i): self.i, self.active, self._token, self._saved = i, False, None, None

    @critical
    def apply(self):
        if self.active:
            released = True; interrupts.settle(); raise RuntimeError("applied")
        token = interrupts.install(); locked, saved = False, None
        try:
            interrupts.acquire(LOCK); locked = True
            saved = WEIGHTS[:]                      # save
            for j in range(len(WEIGHTS)):           # edit (a loop: backward jumps are check points)
                WEIGHTS[j] += self.i + 1
            self._saved, self._token = saved, token
            STACK.append(self); self.active = True
            released = True
            interrupts.settle()
            return self
        except BaseException:
            released = False
            if self.active:
                STACK.remove(self); self.active = False
            if saved is not None:
                WEIGHTS[:] = saved
            self._saved, self._token = None, None
            if locked: LOCK.release()
            interrupts.uninstall(token)
            released = True
            interrupts.settle()
            raise

    @critical
    def revert(self, *exc):
        token = interrupts.install(); unwound = []
        try:
            if not self.active: return
            while True:
                top = STACK.pop(); unwound.append(top)
                WEIGHTS[:] = top._saved; top._saved = None; top.active = False; LOCK.release()
                if top is self: break
        finally:
            tokens = [token] + [p._token for p in unwound]
            for p in unwound: p._token = None
            for t in tokens: interrupts.uninstall(t)
            released = True
            interrupts.settle()

    __enter__ = apply
    if "--wrapped" in sys.argv:  # the old design: a frame of its own before revert holds Ctrl-C
        def __exit__(self, *exc):
            self.revert()
    else:
        __exit__ = revert

def body():
    with FakePatch(0):
        with FakePatch(1):
            pass

def main(n):
    rng = random.Random(0); main_id = threading.main_thread().ident
    armed, caught = threading.Event(), threading.Event(); lost = [0]
    t0 = time.perf_counter(); [body() for _ in range(200)]; it = (time.perf_counter() - t0) / 200
    def sender():
        for _ in range(n):
            armed.wait(); armed.clear(); time.sleep(rng.uniform(0, 2.5 * it))
            signal.pthread_kill(main_id, signal.SIGINT)
            while not caught.wait(1.0):
                lost[0] += 1; signal.pthread_kill(main_id, signal.SIGINT)
            caught.clear()
    threading.Thread(target=sender, daemon=True).start()
    sys.setswitchinterval(1e-5)
    bad = {}
    for _ in range(n):
        try:
            armed.set()
            while True: body()
        except KeyboardInterrupt:
            pass
        except Exception as e:
            bad[type(e).__name__] = bad.get(type(e).__name__, 0) + 1
        caught.set()
        for kind, wrong in (("weights", WEIGHTS != ORIGINAL), ("stack", bool(STACK)), ("lock", LOCK._is_owned()),
                            ("handler", signal.getsignal(signal.SIGINT) is not signal.default_int_handler)):
            if wrong: bad[kind] = bad.get(kind, 0) + 1
        STACK.clear(); WEIGHTS[:] = ORIGINAL
        while LOCK._is_owned(): LOCK.release()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"Python {sys.version.split()[0]}: {n} SIGINTs into nested with-blocks, {lost[0]} lost, failures: {bad or 'none'}")

main(int(sys.argv[2]))
