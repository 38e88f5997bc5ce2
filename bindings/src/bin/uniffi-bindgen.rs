//! UniFFI's generator, built with the same UniFFI version as the library: generates the
//! Python, Kotlin and Swift sources from `libsotto_ffi.so` (see `bindings/scripts/`).

fn main() {
    uniffi::uniffi_bindgen_main()
}
