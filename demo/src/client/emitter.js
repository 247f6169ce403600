// A minimal typed-event emitter (browser and Node alike).

export class Emitter {
  #handlers = new Map();

  /** Subscribes; returns a function that unsubscribes. */
  on(name, fn) {
    let set = this.#handlers.get(name);
    if (!set) this.#handlers.set(name, (set = new Set()));
    set.add(fn);
    return () => this.off(name, fn);
  }

  /** Subscribes for one call. */
  once(name, fn) {
    const off = this.on(name, (...args) => {
      off();
      fn(...args);
    });
    return off;
  }

  off(name, fn) {
    this.#handlers.get(name)?.delete(fn);
  }

  emit(name, ...args) {
    const set = this.#handlers.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        // A failing listener must not break the protocol loop.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}
