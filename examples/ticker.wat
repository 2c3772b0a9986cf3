;; A WASI (preview 1) command module for the quickstart: prints a line every second, forever.
;; It sleeps through poll_oneoff on a relative monotonic-clock timeout of one second, so a
;; stop request is seen within a second.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "tick from the canopy wasm demo\n")
  (func $sleep_one_second
    ;; subscription at 200: userdata(u64) = 0, tag(u8) = 0 (clock)
    (i64.store (i32.const 200) (i64.const 0))
    (i32.store8 (i32.const 208) (i32.const 0))
    ;; clock: id(u32) = 1 (monotonic) at 216, timeout(u64) at 224, precision at 232, flags(u16) at 240
    (i32.store (i32.const 216) (i32.const 1))
    (i64.store (i32.const 224) (i64.const 1000000000))
    (i64.store (i32.const 232) (i64.const 0))
    (i32.store16 (i32.const 240) (i32.const 0))
    ;; event out at 304 (8-aligned), count out at 400
    (drop (call $poll_oneoff (i32.const 200) (i32.const 304) (i32.const 1) (i32.const 400))))
  (func (export "_start")
    (loop $forever
      ;; iovec at 100: base 0, length 31
      (i32.store (i32.const 100) (i32.const 0))
      (i32.store (i32.const 104) (i32.const 31))
      (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 108)))
      (call $sleep_one_second)
      (br $forever))))
