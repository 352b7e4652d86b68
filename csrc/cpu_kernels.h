// What the CPU kernels of the pooling ops share: which memory layout a map is read in, memory
// for large results, tiles of the maps, and loops over a pixel's channels compiled for the widest vector
// instructions of the CPU they run on.
//
// The channels-last kernels run one short loop over the contiguous channels of a pixel for every
// sample. Such a loop is written once, as a template over the vector width in bytes, using
// GCC/Clang vector extensions: each of their operations rounds exactly like the scalar one, and
// with -ffp-contract=off (setup.py) none is fused into a multiply-add, so the vector loops give
// the scalar kernels' results bit for bit. `simd::best` instantiates it for AVX-512, AVX2 and the
// baseline instruction set and picks the widest one the CPU has (or MRCNN_CPU_ISA names).
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <c10/core/Allocator.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mrcnn {
namespace cpu {

// Whether the kernels read `map` ([N, C, H, W]) channels last. Only maps stored exactly as
// contiguous NHWC are; a map that is both (one channel, or one pixel) is read as NCHW, as is any
// other layout after a copy. mrcnn/ops/_layout.py states the same rule for the fake kernels.
inline bool is_channels_last(const at::Tensor& map) {
  return map.dim() == 4 && !map.is_contiguous() &&
         map.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat memory_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Memory for the large results of the pooling ops: crops, pooled bins and image gradients of
// tens to hundreds of megabytes (1,000 boxes x 256 channels x 14 x 14 floats is 200 MB),
// requested anew at every step of an inference or training loop. Fresh memory that size comes
// from the kernel page by page, zeroed on first touch, which takes longer than computing the
// values, and goes back to it when freed. This allocator keeps the last few blocks its tensors
// free and hands them out again, as TensorFlow's allocator keeps its blocks; it holds at most
// kCachedBlocks blocks and kCachedBytes bytes. Its blocks are also advised to be backed by
// transparent huge pages (only a hint: systems without them use small pages), which makes first
// touches 512 times rarer.
class ResultMemory final : public c10::Allocator {
 public:
  static constexpr size_t kCachedBlocks = 4;
  static constexpr size_t kCachedBytes = size_t{1} << 30;
  static constexpr size_t kHugePage = size_t{1} << 21;

  // Never destroyed: tensors may free their memory after static destructors have run.
  static ResultMemory& instance() {
    static ResultMemory* memory = new ResultMemory();
    return *memory;
  }

  c10::DataPtr allocate(size_t nbytes) override {
    Block* block = take(nbytes);
    return {block->data, block, &ResultMemory::give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  struct Block {
    void* data;
    size_t size;
  };

  static void give_back(void* context) { instance().keep(static_cast<Block*>(context)); }

  // The smallest cached block that holds nbytes without wasting over a quarter of itself (the
  // most recently freed of equals), or a new one.
  Block* take(size_t nbytes) {
    const size_t size = (std::max<size_t>(nbytes, 1) + kHugePage - 1) / kHugePage * kHugePage;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      auto best = cache_.rend();
      for (auto it = cache_.rbegin(); it != cache_.rend(); ++it) {
        if ((*it)->size >= size && (*it)->size - size <= (*it)->size / 4 &&
            (best == cache_.rend() || (*it)->size < (*best)->size)) {
          best = it;
        }
      }
      if (best != cache_.rend()) {
        Block* block = *best;
        cache_.erase(std::next(best).base());
        cached_bytes_ -= block->size;
        return block;
      }
    }
    void* data = nullptr;
    TORCH_CHECK(posix_memalign(&data, kHugePage, size) == 0,
                "out of memory: cannot allocate ", size, " bytes for a result");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(data, size, MADV_HUGEPAGE);
#endif
    return new Block{data, size};
  }

  // Caches `block`, freeing the oldest cached blocks beyond the limits.
  void keep(Block* block) {
    std::vector<Block*> evicted;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      cache_.push_back(block);
      cached_bytes_ += block->size;
      while (cache_.size() > kCachedBlocks || cached_bytes_ > kCachedBytes) {
        evicted.push_back(cache_.front());
        cached_bytes_ -= cache_.front()->size;
        cache_.pop_front();
      }
    }
    for (Block* old : evicted) {
      free(old->data);
      delete old;
    }
  }

  std::mutex mutex_;
  std::deque<Block*> cache_;  // oldest first
  size_t cached_bytes_ = 0;
};

// Results smaller than this come from PyTorch's allocator: they fit the caches, and its small
// blocks are reused anyway.
constexpr int64_t kResultMemoryBytes = int64_t{16} << 20;

// An uninitialised tensor for a kernel to fill, large ones from ResultMemory.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                               bool channels_last) {
  const at::MemoryFormat layout = memory_format(channels_last);
  const int64_t nbytes =
      c10::multiply_integers(sizes) * static_cast<int64_t>(c10::elementSize(
                                          c10::typeMetaToScalarType(options.dtype())));
  if (nbytes < kResultMemoryBytes) {
    return at::empty(sizes, options.memory_format(layout));
  }
  return at::detail::empty_generic(sizes, &ResultMemory::instance(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), layout);
}

// Tiles of a batch of channels-last maps [N, H, W, C], small enough (with all their channels)
// to stay in a core's L2 cache. The channels-last kernels visit their work tile by tile, so that
// the pixels they read or add into come from the cache, where box after box they would come
// from memory: the benchmark's 1,000 boxes read its 64 MB map 3 (7x7 crops) to 12 (14x14)
// times over.
struct Tiling {
  static constexpr double kBytes = 1 << 18;
  int64_t height, width, tile_height, tile_width, rows, cols, count;

  Tiling(int64_t batch, int64_t height_, int64_t width_, int64_t pixel_bytes)
      : height(height_), width(width_) {
    const auto side = static_cast<int64_t>(
        std::sqrt(kBytes / static_cast<double>(std::max<int64_t>(pixel_bytes, 1))));
    tile_height = std::clamp<int64_t>(side, 1, std::max<int64_t>(height, 1));
    tile_width = std::clamp<int64_t>(side, 1, std::max<int64_t>(width, 1));
    rows = (height + tile_height - 1) / tile_height;
    cols = (width + tile_width - 1) / tile_width;
    count = batch * rows * cols;
  }

  int64_t tile(int64_t image, int64_t y, int64_t x) const {
    return (image * rows + y / tile_height) * cols + x / tile_width;
  }

  // Tile t: pixels [y_begin, y_end) x [x_begin, x_end) of image `image`.
  struct Bounds {
    int64_t image, y_begin, y_end, x_begin, x_end;
    bool contains(int64_t y, int64_t x) const {
      return y >= y_begin && y < y_end && x >= x_begin && x < x_end;
    }
  };
  Bounds bounds(int64_t t) const {
    const int64_t row = t / cols % rows;
    const int64_t col = t % cols;
    return {t / (rows * cols), row * tile_height, std::min(height, (row + 1) * tile_height),
            col * tile_width, std::min(width, (col + 1) * tile_width)};
  }
};

// Results larger than this are written past the caches (simd::store_streaming): they would not
// stay in them anyway.
constexpr int64_t kStreamingBytes = int64_t{16} << 20;

// How many units ahead the backward kernels fetch a unit's gradient into the cache.
constexpr int64_t kPrefetchDistance = 2;

// Fetches [p, p + bytes) into the cache ahead of its use.
inline void prefetch(const void* p, int64_t bytes) {
  for (int64_t offset = 0; offset < bytes; offset += 64) {
    __builtin_prefetch(static_cast<const char*>(p) + offset);
  }
}

// Fetches the pixels of a tile into the L2 cache ahead of the work on it, a few lines per call
// of step(), so that the reads of the map overlap with the work on the tile before it rather
// than wait for memory one at a time: the work's reads jump from pixel to pixel, which the CPU's
// own prefetching does not follow. (Into L2 only: in L1 they would evict the current tile's.)
class TilePrefetcher {
 public:
  // Spreads the lines of tile `t` (of a map of `pixel_bytes` per pixel at `map`) over `steps`
  // calls of step(); a tile past the last does nothing.
  TilePrefetcher(const Tiling& tiling, const void* map, int64_t pixel_bytes, int64_t t,
                 int64_t steps) {
    if (t >= tiling.count) {
      return;
    }
    const Tiling::Bounds tile = tiling.bounds(t);
    row_ = static_cast<const char*>(map) +
           ((tile.image * tiling.height + tile.y_begin) * tiling.width + tile.x_begin) *
               pixel_bytes;
    row_bytes_ = (tile.x_end - tile.x_begin) * pixel_bytes;
    row_stride_ = tiling.width * pixel_bytes;
    rows_left_ = tile.y_end - tile.y_begin;
    const int64_t lines = rows_left_ * ((row_bytes_ + kLine - 1) / kLine);
    lines_per_step_ = (lines + std::max<int64_t>(steps, 1) - 1) / std::max<int64_t>(steps, 1);
  }

  void step() {
    for (int64_t i = 0; i < lines_per_step_ && rows_left_ > 0; ++i) {
      __builtin_prefetch(row_ + offset_, 0, 2);
      offset_ += kLine;
      if (offset_ >= row_bytes_) {
        offset_ = 0;
        row_ += row_stride_;
        --rows_left_;
      }
    }
  }

 private:
  static constexpr int64_t kLine = 64;
  const char* row_ = nullptr;
  int64_t row_bytes_ = 0, row_stride_ = 0, rows_left_ = 0, offset_ = 0, lines_per_step_ = 0;
};

// Units of work (crop samples, pooling bins) in groups: group g, units[begin[g], begin[g + 1]),
// holds in increasing order the units listed under g. The groups are the tiles, and one more
// last for units that touch no pixel.
struct TileGroups {
  std::vector<int64_t> units;
  std::vector<int64_t> begin;
};

// enumerate(add) must call add(unit, g) for every group g of every unit, by increasing unit
// (and for a unit at most once per group); it is called twice.
template <typename Enumerate>
TileGroups group_units(int64_t num_groups, Enumerate&& enumerate) {
  TileGroups groups;
  groups.begin.assign(num_groups + 1, 0);
  enumerate([&](int64_t, int64_t g) { ++groups.begin[g + 1]; });
  for (int64_t g = 0; g < num_groups; ++g) {
    groups.begin[g + 1] += groups.begin[g];
  }
  groups.units.resize(groups.begin[num_groups]);
  std::vector<int64_t> next(groups.begin.begin(), groups.begin.end() - 1);
  enumerate([&](int64_t unit, int64_t g) { groups.units[next[g]++] = unit; });
  return groups;
}

// Runs work(first, last) on consecutive ranges of groups [first, last) that together cover all
// groups, each range with about as many units, never splitting a group. With threads (when the
// work is worth them: about `unit_cost` elementary operations per unit) there are several
// ranges per thread, handed out one at a time to whichever thread is free: on a machine whose
// cores other processes share, a thread that loses its core then holds up one short range
// rather than a fixed half of the work.
template <typename Work>
void parallel_over_groups(const TileGroups& groups, int64_t unit_cost, Work&& work) {
  constexpr int64_t kRangesPerThread = 8;
  const int64_t num_groups = static_cast<int64_t>(groups.begin.size()) - 1;
  const int64_t num_units = static_cast<int64_t>(groups.units.size());
  const int64_t threads =
      num_units * unit_cost >= at::internal::GRAIN_SIZE ? at::get_num_threads() : 1;
  const int64_t ranges = threads == 1 ? 1 : threads * kRangesPerThread;
  std::vector<int64_t> first(ranges + 1, num_groups);
  first[0] = 0;
  for (int64_t range = 1; range < ranges; ++range) {
    // The first group with a unit at or after the range's share of the units.
    first[range] = std::lower_bound(groups.begin.begin(), groups.begin.end() - 1,
                                    num_units * range / ranges) -
                   groups.begin.begin();
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t range = next++; range < ranges; range = next++) {
      work(first[range], first[range + 1]);
    }
  });
}

}  // namespace cpu

namespace simd {

#define MRCNN_ALWAYS_INLINE inline __attribute__((always_inline))

// `Bytes / sizeof(T)` lanes of T, loaded from and stored to any address of a T.
template <typename T, int Bytes>
struct Vec {
  typedef T type __attribute__((vector_size(Bytes), aligned(sizeof(T)), may_alias));
  static constexpr int64_t lanes = Bytes / static_cast<int64_t>(sizeof(T));
};

template <typename T, int Bytes>
MRCNN_ALWAYS_INLINE typename Vec<T, Bytes>::type load(const T* p) {
  return *reinterpret_cast<const typename Vec<T, Bytes>::type*>(p);
}

template <typename T, int Bytes>
MRCNN_ALWAYS_INLINE void store(T* p, typename Vec<T, Bytes>::type value) {
  *reinterpret_cast<typename Vec<T, Bytes>::type*>(p) = value;
}

// `value`, of which the compiler may assume nothing (an optimisation barrier).
template <typename T>
MRCNN_ALWAYS_INLINE T* opaque(T* value) {
  asm("" : "+r"(value));
  return value;
}

// store(), but past the caches (x86 non-temporal store), for results too large to stay in them:
// it spares reading every line of the result from memory before writing it. `p` must be aligned
// to Bytes. Written in assembly because the intrinsics cannot be used from a function compiled
// for the baseline, which the templates are until inlined; streaming_done() must follow the last
// one before the result is read.
template <typename T, int Bytes>
MRCNN_ALWAYS_INLINE void store_streaming(T* p, typename Vec<T, Bytes>::type value) {
#if defined(__x86_64__)
  using V = typename Vec<T, Bytes>::type;
  if constexpr (Bytes == 16) {
    asm("movntps %1, %0" : "=m"(*reinterpret_cast<V*>(p)) : "x"(value));
  } else {
    asm("vmovntps %1, %0" : "=m"(*reinterpret_cast<V*>(p)) : "v"(value));
  }
#else
  store<T, Bytes>(p, value);
#endif
}

inline void streaming_done() {
#if defined(__x86_64__)
  asm volatile("sfence" ::: "memory");
#endif
}

// kernel.run<Bytes>(args...) compiled for each instruction set. Kernel::run and everything it
// calls must be inlined into it (MRCNN_ALWAYS_INLINE, no lambdas), so that all of it is compiled
// for the caller's instruction set.
template <typename Kernel, typename... Args>
struct Variants {
  using Result = decltype(std::declval<const Kernel&>().template run<16>(std::declval<Args>()...));
#if defined(__x86_64__)
  __attribute__((target("avx512f"))) static Result avx512(const Kernel& kernel, Args... args) {
    return kernel.template run<64>(args...);
  }
  __attribute__((target("avx2"))) static Result avx2(const Kernel& kernel, Args... args) {
    return kernel.template run<32>(args...);
  }
#endif
  static Result baseline(const Kernel& kernel, Args... args) {
    return kernel.template run<16>(args...);
  }
};

// Ordered from the widest down.
enum class Isa { kAvx512, kAvx2, kBaseline };

// The widest instruction set of this CPU, or the one named by the environment variable
// MRCNN_CPU_ISA (avx512, avx2 or baseline), which the tests use to run every variant.
inline Isa best_isa() {
  static const Isa isa = [] {
#if defined(__x86_64__)
    const Isa widest = __builtin_cpu_supports("avx512f") ? Isa::kAvx512
                       : __builtin_cpu_supports("avx2")  ? Isa::kAvx2
                                                         : Isa::kBaseline;
#else
    const Isa widest = Isa::kBaseline;
#endif
    const char* requested = std::getenv("MRCNN_CPU_ISA");
    if (requested == nullptr || *requested == '\0') {
      return widest;
    }
    const std::string name(requested);
    TORCH_CHECK(name == "avx512" || name == "avx2" || name == "baseline",
                "MRCNN_CPU_ISA must be avx512, avx2 or baseline, got '", name, "'");
    const Isa isa = name == "avx512" ? Isa::kAvx512 : name == "avx2" ? Isa::kAvx2 : Isa::kBaseline;
    TORCH_CHECK(isa >= widest, "MRCNN_CPU_ISA=", name, ": this CPU (or build) lacks it");
    return isa;
  }();
  return isa;
}

// The variant of kernel.run for this CPU, as a plain function pointer.
template <typename Kernel, typename... Args>
auto best() -> typename Variants<Kernel, Args...>::Result (*)(const Kernel&, Args...) {
#if defined(__x86_64__)
  switch (best_isa()) {
    case Isa::kAvx512:
      return &Variants<Kernel, Args...>::avx512;
    case Isa::kAvx2:
      return &Variants<Kernel, Args...>::avx2;
    case Isa::kBaseline:
      break;
  }
#endif
  return &Variants<Kernel, Args...>::baseline;
}

}  // namespace simd
}  // namespace mrcnn
