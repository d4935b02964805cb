// libFuzzer harness for the patched llama.cpp loader (ahn-gguf; built by tests/fuzz/build.py).
//
// One input = the bytes of one GGUF file. They are loaded exactly as a user's file would be
// (llama_model_load_from_file on a file descriptor path), and when the load succeeds a small
// context is created and a few tokens are decoded, so the hyper-parameters, the vocabulary and
// the AHN graph that a file describes are all exercised. A file may be rejected (NULL, an error
// in the log); it may never abort, crash, leak, or read out of bounds: the sanitizers and
// libFuzzer report those as crashes. Unlike OSS-Fuzz's llama.cpp harnesses, abort() is not
// intercepted: an abort reachable from a file is exactly what this harness exists to find.

#include "llama.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

static void quiet_log(ggml_log_level, const char *, void *) {}

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    // an anonymous in-memory file: no disk traffic, nothing left behind
    const int fd = memfd_create("gguf", 0);
    if (fd < 0) {
        return 0;
    }
    for (size_t off = 0; off < size;) {
        const ssize_t n = write(fd, data + off, size - off);
        if (n <= 0) {
            close(fd);
            return 0;
        }
        off += (size_t) n;
    }
    const std::string path = "/proc/self/fd/" + std::to_string(fd);

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;

    llama_model * model = llama_model_load_from_file(path.c_str(), mparams);
    if (model != nullptr) {
        llama_context_params cparams = llama_context_default_params();
        cparams.n_ctx           = 128;
        cparams.n_batch         = 64;
        cparams.n_ubatch        = 64;
        cparams.n_seq_max       = 1;
        cparams.n_threads       = 1;
        cparams.n_threads_batch = 1;
        cparams.no_perf         = true;

        llama_context * ctx = llama_init_from_model(model, cparams);
        if (ctx != nullptr) {
            const llama_vocab * vocab = llama_model_get_vocab(model);
            const char * text = "fuzz the AHN memory";
            std::vector<llama_token> tokens(64);
            const int n = llama_tokenize(vocab, text, (int32_t) strlen(text), tokens.data(), (int32_t) tokens.size(), true, true);
            if (n > 0) {
                // llama_decode asserts a batch within n_batch: that is the caller's contract, not the file's
                tokens.resize(std::min<size_t>((size_t) n, 48));
                // a prompt, then two decode steps: prefill and the single-token path both run
                llama_batch batch = llama_batch_get_one(tokens.data(), (int32_t) tokens.size());
                if (llama_decode(ctx, batch) == 0) {
                    llama_token next = tokens.back();
                    for (int step = 0; step < 2; ++step) {
                        batch = llama_batch_get_one(&next, 1);
                        if (llama_decode(ctx, batch) != 0) {
                            break;
                        }
                    }
                }
                char piece[64];
                llama_token_to_piece(vocab, tokens[0], piece, sizeof(piece), 0, true);
            }
            llama_free(ctx);
        }
        llama_model_free(model);
    }
    close(fd);
    return 0;
}
