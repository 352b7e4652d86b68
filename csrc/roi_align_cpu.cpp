// CPU kernels of mrcnn::roi_align and mrcnn::roi_align_backward (float32 and float64).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"
#include "roi_align_common.h"

namespace mrcnn {
namespace roi_align {
namespace {

void check_cpu_dtype(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.scalar_type() == at::kFloat || tensor.scalar_type() == at::kDouble,
              "roi_align on the CPU supports float32 and float64 ", name, ", got ",
              tensor.scalar_type(), " (float16 and bfloat16 are supported on CUDA only)");
}

// Work units smaller than this many output bins run on one thread: a bin costs tens to hundreds
// of flops, which is too little to pay for waking the other threads.
constexpr int64_t kMinBinsPerTask = 4096;

int64_t grain_size(int64_t bins_per_unit) {
  return std::max<int64_t>(1, kMinBinsPerTask / std::max<int64_t>(1, bins_per_unit));
}

// One sample along one axis: its two taps, unless it lies more than a pixel off the map.
template <typename T>
struct SampleTaps {
  AxisTaps<T> taps;
  bool valid;
};

// The sampling geometry of every roi, computed once and shared by all channels: its bins, its
// image, and the taps of its samples along each axis, bin by bin.
template <typename T>
struct RoiGeometry {
  std::vector<RoiBins<T>> bins;
  std::vector<int64_t> batch_index;
  // Roi k's y samples are y[y_first[k] + ph * grid_h + iy]; its x samples likewise.
  std::vector<int64_t> y_first, x_first;
  std::vector<SampleTaps<T>> y, x;
};

template <typename T>
void append_axis_samples(T start, T bin_size, int64_t grid, int64_t pooled, int64_t size,
                         std::vector<SampleTaps<T>>& samples) {
  for (int64_t bin = 0; bin < pooled; ++bin) {
    for (int64_t i = 0; i < grid; ++i) {
      SampleTaps<T> sample;
      sample.valid = axis_taps(sample_coord(start, bin_size, bin, i, grid), size, sample.taps);
      samples.push_back(sample);
    }
  }
}

template <typename T>
RoiGeometry<T> roi_geometry(const T* rois, int64_t num_rois, const Params<T>& p) {
  RoiGeometry<T> geometry;
  for (int64_t k = 0; k < num_rois; ++k) {
    const T* roi = rois + 5 * k;
    const RoiBins<T> bins = roi_bins(roi, p);
    geometry.bins.push_back(bins);
    geometry.batch_index.push_back(static_cast<int64_t>(roi[0]));
    geometry.y_first.push_back(static_cast<int64_t>(geometry.y.size()));
    geometry.x_first.push_back(static_cast<int64_t>(geometry.x.size()));
    append_axis_samples(bins.start_h, bins.bin_h, bins.grid_h, p.pooled_height, p.height,
                        geometry.y);
    append_axis_samples(bins.start_w, bins.bin_w, bins.grid_w, p.pooled_width, p.width,
                        geometry.x);
  }
  return geometry;
}

// The pixel rows (or columns) [begin, end) that the valid samples of `samples`[0, grid) tap.
template <typename T>
std::pair<int64_t, int64_t> tap_span(const SampleTaps<T>* samples, int64_t grid) {
  bool any = false;
  int64_t begin = 0;
  int64_t end = 0;
  for (int64_t i = 0; i < grid; ++i) {
    if (samples[i].valid) {
      begin = any ? std::min(begin, samples[i].taps.low) : samples[i].taps.low;
      end = any ? std::max(end, samples[i].taps.high + 1) : samples[i].taps.high + 1;
      any = true;
    }
  }
  return {begin, end};
}

// Calls visit(offset, weight) for the taps of every sample of bin (ph, pw) of roi k, in the
// order of for_each_tap, so that the CPU sums exactly as the CUDA kernels do.
template <typename T, typename Visit>
void for_each_roi_tap(const RoiGeometry<T>& geometry, int64_t k, int64_t ph, int64_t pw,
                      int64_t width, Visit&& visit) {
  const RoiBins<T>& bins = geometry.bins[k];
  const SampleTaps<T>* ys = &geometry.y[geometry.y_first[k] + ph * bins.grid_h];
  const SampleTaps<T>* xs = &geometry.x[geometry.x_first[k] + pw * bins.grid_w];
  for (int64_t iy = 0; iy < bins.grid_h; ++iy) {
    if (!ys[iy].valid) {
      continue;
    }
    for (int64_t ix = 0; ix < bins.grid_w; ++ix) {
      if (xs[ix].valid) {
        visit_taps(ys[iy].taps, xs[ix].taps, width, visit);
      }
    }
  }
}

// Both directions split the channels over the threads and run every roi through a channel
// before the next: the rois of a channel all read (or add into) the same plane, which stays in
// cache, where going roi by roi would fetch every plane from memory again for each roi. The
// backward pass zeroes each plane of its gradient just before adding into it, and no two threads
// ever write the same value.
template <typename T>
void forward_planes(const T* input, const T* rois, int64_t num_rois, const Params<T>& p,
                    T* output) {
  const RoiGeometry<T> geometry = roi_geometry(rois, num_rois, p);
  const int64_t bins_per_plane = p.pooled_height * p.pooled_width;
  const int64_t plane_size = p.height * p.width;
  at::parallel_for(0, p.channels, grain_size(num_rois * bins_per_plane),
                   [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t k = 0; k < num_rois; ++k) {
        const T* plane = input + (geometry.batch_index[k] * p.channels + c) * plane_size;
        T* out = output + (k * p.channels + c) * bins_per_plane;
        const T count = geometry.bins[k].count();
        for (int64_t ph = 0; ph < p.pooled_height; ++ph) {
          for (int64_t pw = 0; pw < p.pooled_width; ++pw) {
            T sum = T(0);
            for_each_roi_tap(geometry, k, ph, pw, p.width,
                             [&](int64_t offset, T weight) { sum += weight * plane[offset]; });
            out[ph * p.pooled_width + pw] = sum / count;
          }
        }
      }
    }
  });
}

template <typename T>
void backward_planes(const T* grad, const T* rois, int64_t num_rois, const Params<T>& p,
                     int64_t batch, T* grad_input) {
  const RoiGeometry<T> geometry = roi_geometry(rois, num_rois, p);
  const int64_t bins_per_plane = p.pooled_height * p.pooled_width;
  const int64_t plane_size = p.height * p.width;
  at::parallel_for(0, p.channels, grain_size(num_rois * bins_per_plane),
                   [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t n = 0; n < batch; ++n) {
        std::fill_n(grad_input + (n * p.channels + c) * plane_size, plane_size, T(0));
      }
      for (int64_t k = 0; k < num_rois; ++k) {
        T* grad_plane = grad_input + (geometry.batch_index[k] * p.channels + c) * plane_size;
        const T* grad_bins = grad + (k * p.channels + c) * bins_per_plane;
        const T count = geometry.bins[k].count();
        for (int64_t ph = 0; ph < p.pooled_height; ++ph) {
          for (int64_t pw = 0; pw < p.pooled_width; ++pw) {
            const T scale = grad_bins[ph * p.pooled_width + pw] / count;
            for_each_roi_tap(geometry, k, ph, pw, p.width, [&](int64_t offset, T weight) {
              grad_plane[offset] += scale * weight;
            });
          }
        }
      }
    }
  });
}

// The channels-last kernels: every tap of a bin reads (or adds into) the channels of one pixel
// as a contiguous vector. Each value sums the same terms in the same order as the NCHW kernels,
// hence the same result. Bins are visited tile by tile of the map (cpu::Tiling). Bin b is
// (roi, ph, pw) with b = (roi * pooled_height + ph) * pooled_width + pw.
template <typename T>
struct TiledBins {
  const RoiGeometry<T>* geometry;
  Params<T> params;
  cpu::Tiling tiling;
  cpu::TileGroups groups;

  int64_t roi(int64_t bin) const { return bin / (params.pooled_height * params.pooled_width); }
  // The samples of `bin` along each axis: ys()[0, grid_h), xs()[0, grid_w).
  const SampleTaps<T>* ys(int64_t bin) const {
    const int64_t k = roi(bin);
    const int64_t ph = bin / params.pooled_width % params.pooled_height;
    return &geometry->y[geometry->y_first[k] + ph * geometry->bins[k].grid_h];
  }
  const SampleTaps<T>* xs(int64_t bin) const {
    const int64_t k = roi(bin);
    const int64_t pw = bin % params.pooled_width;
    return &geometry->x[geometry->x_first[k] + pw * geometry->bins[k].grid_w];
  }
  // Offset of channel 0 of pixel (y, x) of the map of `bin`'s roi.
  int64_t pixel(int64_t bin, int64_t y, int64_t x) const {
    return ((geometry->batch_index[roi(bin)] * params.height + y) * params.width + x) *
           params.channels;
  }
};

// Taps of a bin gathered for summing: channel 0 of each tap's pixel, and the tap's weight. A bin
// with more taps (a large adaptive sampling grid) is summed in batches, its partial sums carried
// in memory, which rounds the same.
template <typename T>
struct TapBatch {
  static constexpr int kCapacity = 256;
  const T* pixel[kCapacity];
  T weight[kCapacity];
  int count = 0;
};

// sum / count, as a multiplication when count is a power of two (the common 2 x 2 samples a
// bin): scaling by a power of two is exact either way, and a vector division costs several
// multiplications.
template <typename T>
struct Mean {
  T count;
  T inverse;
  bool power_of_two;

  explicit Mean(T count_) : count(count_), inverse(T(1) / count_) {
    int exponent;
    power_of_two = std::frexp(count, &exponent) == T(0.5);
  }

  template <typename V>
  MRCNN_ALWAYS_INLINE V operator()(V sum) const {
    return power_of_two ? sum * inverse : sum / count;
  }
};

// Sums the weighted taps over channels [c, c + Vectors * lanes), starting from 0 or, with
// `partial`, from `sums`. Stores the sums to `sums` when `out` is null, else their mean to `out`,
// with Stream past the caches. (sums and out point at channel c.)
template <int Bytes, int Vectors, bool Stream, typename T>
MRCNN_ALWAYS_INLINE void sum_tap_vectors(const TapBatch<T>& taps, int64_t c, bool partial,
                                         T* sums, T* out, const Mean<T>& mean) {
  using V = typename simd::Vec<T, Bytes>::type;
  constexpr int64_t lanes = simd::Vec<T, Bytes>::lanes;
  V sum[Vectors];
  for (int j = 0; j < Vectors; ++j) {
    sum[j] = partial ? simd::load<T, Bytes>(sums + j * lanes) : V{};
  }
  for (int t = 0; t < taps.count; ++t) {
    // Opaque, so that the loads below address pixel + a constant: otherwise GCC keeps the
    // Vectors offsets c + j * lanes in registers, which spill.
    const T* pixel = simd::opaque(taps.pixel[t] + c);
    const T weight = taps.weight[t];
    for (int j = 0; j < Vectors; ++j) {
      sum[j] += weight * simd::load<T, Bytes>(pixel + j * lanes);
    }
  }
  for (int j = 0; j < Vectors; ++j) {
    if (out == nullptr) {
      simd::store<T, Bytes>(sums + j * lanes, sum[j]);
    } else if constexpr (Stream) {
      simd::store_streaming<T, Bytes>(out + j * lanes, mean(sum[j]));
    } else {
      simd::store<T, Bytes>(out + j * lanes, mean(sum[j]));
    }
  }
}

// sum_tap_vectors over all channels: as many vectors at once as registers allow, then one by
// one, then the channels left over.
template <int Bytes, bool Stream, typename T>
MRCNN_ALWAYS_INLINE void sum_taps(const TapBatch<T>& taps, bool partial, T* sums, T* out,
                                  T count, int64_t channels) {
  const Mean<T> mean(count);
  constexpr int64_t lanes = simd::Vec<T, Bytes>::lanes;
  // 32 registers with AVX-512, 16 below.
  constexpr int vectors = Bytes == 64 ? 16 : 8;
  int64_t c = 0;
  for (; c + vectors * lanes <= channels; c += vectors * lanes) {
    sum_tap_vectors<Bytes, vectors, Stream>(taps, c, partial, sums + c,
                                            out == nullptr ? nullptr : out + c, mean);
  }
  for (; c + lanes <= channels; c += lanes) {
    sum_tap_vectors<Bytes, 1, Stream>(taps, c, partial, sums + c,
                                      out == nullptr ? nullptr : out + c, mean);
  }
  for (; c < channels; ++c) {
    T sum = partial ? sums[c] : T(0);
    for (int t = 0; t < taps.count; ++t) {
      sum += taps.weight[t] * taps.pixel[t][c];
    }
    if (out == nullptr) {
      sums[c] = sum;
    } else {
      out[c] = mean(sum);
    }
  }
}

// Pools bins [N, H, W, C] -> [K, pooled_height, pooled_width, C], all channels of a bin at once.
template <typename T>
struct PoolTiles {
  const TiledBins<T>* bins;
  const T* input;
  T* output;
  bool stream;  // write the output past the caches

  template <int Bytes>
  MRCNN_ALWAYS_INLINE void run(int64_t first, int64_t last) const {
    const TiledBins<T>& p = *bins;
    const int64_t channels = p.params.channels;
    const bool aligned = stream && reinterpret_cast<uintptr_t>(output) % Bytes == 0 &&
                         channels * sizeof(T) % Bytes == 0;
    std::vector<T> sums(channels);
    TapBatch<T> taps;
    for (int64_t t = first; t < last; ++t) {
      const int64_t units = p.groups.begin[t + 1] - p.groups.begin[t];
      cpu::TilePrefetcher next(p.tiling, input, channels * sizeof(T), t + 1, units);
      for (int64_t i = p.groups.begin[t]; i < p.groups.begin[t + 1]; ++i) {
        next.step();
        if (aligned) {
          pool_bin<Bytes, true>(p.groups.units[i], sums.data(), taps);
        } else {
          pool_bin<Bytes, false>(p.groups.units[i], sums.data(), taps);
        }
      }
    }
    if (aligned) {
      simd::streaming_done();
    }
  }

  // Pools `bin` into the output, with `sums` (C values) and `taps` for scratch.
  template <int Bytes, bool Stream>
  MRCNN_ALWAYS_INLINE void pool_bin(int64_t bin, T* sums, TapBatch<T>& taps) const {
    const TiledBins<T>& p = *bins;
    const int64_t channels = p.params.channels;
    const RoiBins<T>& roi_bins = p.geometry->bins[p.roi(bin)];
    const SampleTaps<T>* ys = p.ys(bin);
    const SampleTaps<T>* xs = p.xs(bin);
    bool partial = false;
    taps.count = 0;
    for (int64_t iy = 0; iy < roi_bins.grid_h; ++iy) {
      if (!ys[iy].valid) {
        continue;
      }
      const AxisTaps<T>& y = ys[iy].taps;
      const T* low_row = input + p.pixel(bin, y.low, 0);
      const T* high_row = input + p.pixel(bin, y.high, 0);
      for (int64_t ix = 0; ix < roi_bins.grid_w; ++ix) {
        if (!xs[ix].valid) {
          continue;
        }
        if (taps.count + 4 > TapBatch<T>::kCapacity) {
          sum_taps<Bytes, false>(taps, partial, sums, static_cast<T*>(nullptr), T(1), channels);
          partial = true;
          taps.count = 0;
        }
        // visit_taps' order and weights.
        const AxisTaps<T>& x = xs[ix].taps;
        const int64_t low = x.low * channels;
        const int64_t high = x.high * channels;
        const T* pixels[4] = {low_row + low, low_row + high, high_row + low, high_row + high};
        const T weights[4] = {y.low_weight * x.low_weight, y.low_weight * x.high_weight,
                              y.high_weight * x.low_weight, y.high_weight * x.high_weight};
        for (int k = 0; k < 4; ++k) {
          taps.pixel[taps.count] = pixels[k];
          taps.weight[taps.count++] = weights[k];
        }
      }
    }
    sum_taps<Bytes, Stream>(taps, partial, sums, output + bin * channels, roi_bins.count(),
                            channels);
  }
};

// Adds the gradient of the bins [K, pooled_height, pooled_width, C] into grad_input [N, H, W, C],
// tile by tile: a tile's pixels are zeroed, then get the terms of the taps in the tile of the
// bins listed under it, bin after bin and tap after tap, the NCHW kernel's order for every
// value; no two threads write one value.
template <typename T>
struct ScatterTiles {
  const TiledBins<T>* bins;
  const T* grad;
  T* grad_input;

  template <int Bytes>
  MRCNN_ALWAYS_INLINE void run(int64_t first, int64_t last) const {
    using V = typename simd::Vec<T, Bytes>::type;
    constexpr int64_t lanes = simd::Vec<T, Bytes>::lanes;
    const TiledBins<T>& p = *bins;
    const int64_t channels = p.params.channels;
    std::vector<T> scale(channels);
    for (int64_t t = first; t < std::min(last, p.tiling.count); ++t) {
      const cpu::Tiling::Bounds tile = p.tiling.bounds(t);
      for (int64_t y = tile.y_begin; y < tile.y_end; ++y) {
        std::fill_n(grad_input +
                        ((tile.image * p.params.height + y) * p.params.width + tile.x_begin) *
                            channels,
                    (tile.x_end - tile.x_begin) * channels, T(0));
      }
      for (int64_t i = p.groups.begin[t]; i < p.groups.begin[t + 1]; ++i) {
        if (i + cpu::kPrefetchDistance < p.groups.begin[t + 1]) {
          cpu::prefetch(grad + p.groups.units[i + cpu::kPrefetchDistance] * channels,
                        channels * sizeof(T));
        }
        const int64_t bin = p.groups.units[i];
        const RoiBins<T>& roi_bins = p.geometry->bins[p.roi(bin)];
        const SampleTaps<T>* ys = p.ys(bin);
        const SampleTaps<T>* xs = p.xs(bin);
        const T* g = grad + bin * channels;
        const T count = roi_bins.count();
        int64_t c = 0;
        for (; c + lanes <= channels; c += lanes) {
          simd::store<T, Bytes>(scale.data() + c, simd::load<T, Bytes>(g + c) / count);
        }
        for (; c < channels; ++c) {
          scale[c] = g[c] / count;
        }
        for (int64_t iy = 0; iy < roi_bins.grid_h; ++iy) {
          if (!ys[iy].valid) {
            continue;
          }
          const AxisTaps<T>& y = ys[iy].taps;
          for (int64_t ix = 0; ix < roi_bins.grid_w; ++ix) {
            if (!xs[ix].valid) {
              continue;
            }
            const AxisTaps<T>& x = xs[ix].taps;
            const int64_t tap_y[4] = {y.low, y.low, y.high, y.high};
            const int64_t tap_x[4] = {x.low, x.high, x.low, x.high};
            const T weight[4] = {y.low_weight * x.low_weight, y.low_weight * x.high_weight,
                                 y.high_weight * x.low_weight, y.high_weight * x.high_weight};
            for (int tap = 0; tap < 4; ++tap) {
              if (!tile.contains(tap_y[tap], tap_x[tap])) {
                continue;
              }
              T* pixel = grad_input + p.pixel(bin, tap_y[tap], tap_x[tap]);
              int64_t c = 0;
              for (; c + lanes <= channels; c += lanes) {
                const V term = simd::load<T, Bytes>(scale.data() + c) * weight[tap];
                simd::store<T, Bytes>(pixel + c, simd::load<T, Bytes>(pixel + c) + term);
              }
              for (; c < channels; ++c) {
                pixel[c] += scale[c] * weight[tap];
              }
            }
          }
        }
      }
    }
  }
};

// Calls visit(bin, rows, cols, image) for every bin, in order, where rows and cols are the
// ranges of pixels its valid taps span, empty for a bin without one.
template <typename T, typename Visit>
void for_each_bin(const TiledBins<T>& p, Visit&& visit) {
  const RoiGeometry<T>& geometry = *p.geometry;
  int64_t bin = 0;
  for (int64_t k = 0; k < static_cast<int64_t>(geometry.bins.size()); ++k) {
    const RoiBins<T>& roi_bins = geometry.bins[k];
    for (int64_t ph = 0; ph < p.params.pooled_height; ++ph) {
      const SampleTaps<T>* ys = &geometry.y[geometry.y_first[k] + ph * roi_bins.grid_h];
      const auto [y_begin, y_end] = tap_span(ys, roi_bins.grid_h);
      for (int64_t pw = 0; pw < p.params.pooled_width; ++pw, ++bin) {
        const SampleTaps<T>* xs = &geometry.x[geometry.x_first[k] + pw * roi_bins.grid_w];
        const auto [x_begin, x_end] = tap_span(xs, roi_bins.grid_w);
        visit(bin, y_begin, y_end, x_begin, x_end, geometry.batch_index[k]);
      }
    }
  }
}

// Every bin with a tap under the tile of its first one, the others (which pool to 0) in the
// extra group.
template <typename T>
void group_by_first_tap(TiledBins<T>& p) {
  const cpu::Tiling& tiling = p.tiling;
  p.groups = cpu::group_units(tiling.count + 1, [&](auto add) {
    for_each_bin(p, [&](int64_t bin, int64_t y_begin, int64_t y_end, int64_t x_begin,
                        int64_t x_end, int64_t image) {
      add(bin, y_begin < y_end && x_begin < x_end ? tiling.tile(image, y_begin, x_begin)
                                                  : tiling.count);
    });
  });
}

// Every bin under each tile its taps' span meets.
template <typename T>
void group_by_taps(TiledBins<T>& p) {
  const cpu::Tiling& tiling = p.tiling;
  p.groups = cpu::group_units(tiling.count + 1, [&](auto add) {
    for_each_bin(p, [&](int64_t bin, int64_t y_begin, int64_t y_end, int64_t x_begin,
                        int64_t x_end, int64_t image) {
      if (!(y_begin < y_end && x_begin < x_end)) {
        return;
      }
      for (int64_t y = y_begin / tiling.tile_height; y <= (y_end - 1) / tiling.tile_height; ++y) {
        for (int64_t x = x_begin / tiling.tile_width; x <= (x_end - 1) / tiling.tile_width; ++x) {
          add(bin, tiling.tile(image, y * tiling.tile_height, x * tiling.tile_width));
        }
      }
    });
  });
}

template <typename T>
void forward_channels_last(const T* input, const T* rois, int64_t num_rois, const Params<T>& p,
                           int64_t batch, T* output) {
  const RoiGeometry<T> geometry = roi_geometry(rois, num_rois, p);
  TiledBins<T> tiled{&geometry, p,
                     cpu::Tiling(batch, p.height, p.width, p.channels * sizeof(T)), {}};
  group_by_first_tap(tiled);
  const int64_t output_bytes =
      num_rois * p.pooled_height * p.pooled_width * p.channels * static_cast<int64_t>(sizeof(T));
  const PoolTiles<T> kernel{&tiled, input, output, output_bytes >= cpu::kStreamingBytes};
  const auto pool_tiles = simd::best<PoolTiles<T>, int64_t, int64_t>();
  // Sixteen taps a bin with two samples per axis.
  cpu::parallel_over_groups(tiled.groups, 16 * p.channels, [&](int64_t first, int64_t last) {
    pool_tiles(kernel, first, last);
  });
}

template <typename T>
void backward_channels_last(const T* grad, const T* rois, int64_t num_rois, const Params<T>& p,
                            int64_t batch, T* grad_input) {
  const RoiGeometry<T> geometry = roi_geometry(rois, num_rois, p);
  TiledBins<T> tiled{&geometry, p,
                     cpu::Tiling(batch, p.height, p.width, p.channels * sizeof(T)), {}};
  group_by_taps(tiled);
  const ScatterTiles<T> kernel{&tiled, grad, grad_input};
  const auto scatter_tiles = simd::best<ScatterTiles<T>, int64_t, int64_t>();
  cpu::parallel_over_groups(tiled.groups, 16 * p.channels, [&](int64_t first, int64_t last) {
    scatter_tiles(kernel, first, last);
  });
}

// Fills `output` ([K, C, pooled_height, pooled_width], laid out as the input is read: channels
// last or NCHW, contiguous).
void fill_output(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                 bool channels_last, at::Tensor& output) {
  const at::Tensor input_ = input.contiguous(cpu::memory_format(channels_last));
  const at::Tensor rois_ = rois.to(input.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_align_forward_cpu", [&] {
    const auto params =
        make_params<scalar_t>(spatial_scale, input.size(1), input.size(2), input.size(3),
                              pooled_height, pooled_width, sampling_ratio, aligned);
    const scalar_t* input_data = input_.const_data_ptr<scalar_t>();
    const scalar_t* rois_data = rois_.const_data_ptr<scalar_t>();
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    if (channels_last) {
      forward_channels_last(input_data, rois_data, rois.size(0), params, input.size(0),
                            output_data);
    } else {
      forward_planes(input_data, rois_data, rois.size(0), params, output_data);
    }
  });
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                 int64_t sampling_ratio, bool aligned) {
  check_forward_args(input, rois, pooled_height, pooled_width);
  check_cpu_dtype(input, "input");
  const bool channels_last = cpu::is_channels_last(input);
  at::Tensor output = cpu::empty_output(
      {rois.size(0), input.size(1), pooled_height, pooled_width}, input.options(), channels_last);
  fill_output(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
              channels_last, output);
  return output;
}

// Writes straight into `out` when it is laid out as the kernel writes (as roi_align would return
// it), else through a copy.
void roi_align_out_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                       int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                       bool aligned, at::Tensor& out) {
  check_forward_args(input, rois, pooled_height, pooled_width);
  check_cpu_dtype(input, "input");
  check_out(input, rois.size(0), pooled_height, pooled_width, out);
  const bool channels_last = cpu::is_channels_last(input);
  if (out.is_contiguous(cpu::memory_format(channels_last))) {
    fill_output(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
                channels_last, out);
  } else {
    out.copy_(roi_align_forward_cpu(input, rois, spatial_scale, pooled_height, pooled_width,
                                    sampling_ratio, aligned));
  }
}

// The gradient comes out in the layout of `grad`: channels last for a channels-last grad.
at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width, int64_t batch, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned) {
  check_backward_args(grad, rois, pooled_height, pooled_width, batch, channels, height, width);
  check_cpu_dtype(grad, "grad");
  const bool channels_last = cpu::is_channels_last(grad);
  const at::Tensor grad_ = grad.contiguous(cpu::memory_format(channels_last));
  const at::Tensor rois_ = rois.to(grad.scalar_type()).contiguous();
  at::Tensor grad_input =
      cpu::empty_output({batch, channels, height, width}, grad.options(), channels_last);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_align_backward_cpu", [&] {
    const auto params = make_params<scalar_t>(spatial_scale, channels, height, width,
                                              pooled_height, pooled_width, sampling_ratio,
                                              aligned);
    const auto run =
        channels_last ? &backward_channels_last<scalar_t> : &backward_planes<scalar_t>;
    run(grad_.const_data_ptr<scalar_t>(), rois_.const_data_ptr<scalar_t>(), rois.size(0),
        params, batch, grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("roi_align.out", &roi_align_out_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace roi_align
}  // namespace mrcnn
