"""An iterator computed ahead in a background thread, so host work overlaps the device step."""

import queue
import threading
from collections.abc import Iterator


class BackgroundIterator:
    """Yields the items of `items`, produced up to `prefetch` ahead by a daemon thread.

    An exception in the producer is raised by the `__next__` that would have returned the item;
    `close()` stops the thread (a blocked producer notices within 0.1 s).
    """

    def __init__(self, items: Iterator, prefetch: int = 2):
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except Exception as e:  # handed to the consumer, raised by __next__
            self._put(e)

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, Exception):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop the thread; later `__next__` calls raise StopIteration."""
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
