# Part of _core.pyx: a coarse clock for fast paths that must notice, at most about a
# second late, that time has passed, without reading a clock per call (_capi.h keeps it).


@cython.final
cdef class CoarseClock:
    """``tick`` goes up by one every ``period`` (half a second) once ``start()`` was
    called, kept by a thread that never takes the GIL. Every instance reads the one count."""

    @property
    def tick(self):
        return fastbind_load(&fastbind_coarse_ticks)

    @property
    def period(self):
        """Seconds between ticks (a benchmark under a slow tool may stretch them)."""
        return fastbind_load(&fastbind_coarse_period_ns) / 1e9

    @period.setter
    def period(self, double seconds):
        if not 0.001 <= seconds <= 3600:
            raise ValueError(f"CoarseClock.period must be 0.001 to 3600 seconds, not {seconds!r}")
        fastbind_store(&fastbind_coarse_period_ns, <int64_t>(seconds * 1e9))

    def start(self):
        """Make sure the thread runs (cheap when it does; again in a child after fork)."""
        cdef int error = fastbind_coarse_start()
        if error:
            raise OSError(error, f"fastbind could not start its coarse clock's thread: {os.strerror(error)}")

    def after_fork(self):
        """In a child after fork: the thread is started again by the next ``start()``."""
        fastbind_coarse_after_fork()
