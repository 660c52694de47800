{
  "targets": [
    {
      "target_name": "fixedram",
      "sources": ["fixedram.cc", "pages.cc", "sys.cc", "hash.cc", "hash-avx2.cc", "hash-avx512.cc"],
      "include_dirs": ["vendor/xxhash", "<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "XXH_INLINE_ALL",
        "_GNU_SOURCE"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-O3", "-fvisibility=hidden"],
      "conditions": [
        ["OS!='linux'", {"sources!": [], "defines": ["FIXEDRAM_UNSUPPORTED_OS"]}]
      ]
    }
  ]
}
