;; hostile/wrong_abi: a complete-looking plugin that declares ABI version 99.
;; The host must refuse it after reading spillway_abi_version and before calling
;; anything else: init and transform trap if they are ever reached.
(module
  (memory (export "memory") 2)
  (func (export "spillway_abi_version") (result i32) (i32.const 99))
  (func (export "spillway_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "spillway_init") (param i32 i32) (result i32) unreachable)
  (func (export "spillway_transform") (param i32 i32) (result i64) unreachable))
