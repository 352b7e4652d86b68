// RoIAlign with torchvision.ops.roi_align semantics: the geometry and bilinear sampling shared by
// the CPU and CUDA kernels (host/device inline code), and the argument checks shared by both.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/macros/Macros.h>

#include <array>
#include <cmath>
#include <cstdint>

namespace mrcnn {
namespace roi_align {

// The scalar arguments of the op. T is the type the geometry is computed in: float32 for
// float16/bfloat16 input (so that box coordinates keep their precision), the input's type
// otherwise.
template <typename T>
struct Params {
  T spatial_scale;
  int64_t channels;
  int64_t height;
  int64_t width;
  int64_t pooled_height;
  int64_t pooled_width;
  int64_t sampling_ratio;
  bool aligned;
};

template <typename T>
inline Params<T> make_params(double spatial_scale, int64_t channels, int64_t height, int64_t width,
                             int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                             bool aligned) {
  return Params<T>{static_cast<T>(spatial_scale), channels,     height,         width,
                   pooled_height,                 pooled_width, sampling_ratio, aligned};
}

// One roi in feature-map pixels: the top-left corner, the size of a bin, and how many samples
// each bin averages along each axis.
template <typename T>
struct RoiBins {
  T start_h;
  T start_w;
  T bin_h;
  T bin_w;
  int64_t grid_h;
  int64_t grid_w;

  // An empty sampling grid averages nothing and yields 0 rather than 0/0.
  C10_HOST_DEVICE T count() const {
    const int64_t samples = grid_h * grid_w;
    return static_cast<T>(samples > 1 ? samples : 1);
  }
};

template <typename T>
C10_HOST_DEVICE inline int64_t samples_per_bin(T roi_size, int64_t pooled_size,
                                               int64_t sampling_ratio) {
  if (sampling_ratio > 0) {
    return sampling_ratio;
  }
  const T samples = std::ceil(roi_size / static_cast<T>(pooled_size));
  // Rois of negative size sample nothing, as torchvision's negative grid counts do; so do rois of
  // NaN or infinite size, whose samples would all be off the map (and never end).
  return samples >= T(1) && std::isfinite(samples) ? static_cast<int64_t>(samples) : 0;
}

// roi points at (batch_index, x1, y1, x2, y2) in input-image coordinates.
template <typename T>
C10_HOST_DEVICE inline RoiBins<T> roi_bins(const T* roi, const Params<T>& p) {
  // aligned: pixel centres sit at integer + 0.5 box coordinates, as in Detectron2.
  const T offset = p.aligned ? T(0.5) : T(0);
  const T start_w = roi[1] * p.spatial_scale - offset;
  const T start_h = roi[2] * p.spatial_scale - offset;
  T roi_width = (roi[3] * p.spatial_scale - offset) - start_w;
  T roi_height = (roi[4] * p.spatial_scale - offset) - start_h;
  if (!p.aligned) {
    // The legacy (unaligned) op grows degenerate rois to one pixel.
    roi_width = roi_width < T(1) ? T(1) : roi_width;
    roi_height = roi_height < T(1) ? T(1) : roi_height;
  }
  RoiBins<T> bins;
  bins.start_h = start_h;
  bins.start_w = start_w;
  bins.bin_h = roi_height / static_cast<T>(p.pooled_height);
  bins.bin_w = roi_width / static_cast<T>(p.pooled_width);
  bins.grid_h = samples_per_bin(roi_height, p.pooled_height, p.sampling_ratio);
  bins.grid_w = samples_per_bin(roi_width, p.pooled_width, p.sampling_ratio);
  return bins;
}

// Offset of the (batch, channel) plane of the input (or its gradient) that roi samples.
template <typename T>
C10_HOST_DEVICE inline int64_t input_plane(const T* roi, int64_t channel, const Params<T>& p) {
  return (static_cast<int64_t>(roi[0]) * p.channels + channel) * p.height * p.width;
}

// Sample `index` of the `grid` evenly spaced samples in bin `bin_index`, along one axis.
template <typename T>
C10_HOST_DEVICE inline T sample_coord(T start, T bin_size, int64_t bin_index, int64_t index,
                                      int64_t grid) {
  return start + static_cast<T>(bin_index) * bin_size +
         (static_cast<T>(index) + T(0.5)) * bin_size / static_cast<T>(grid);
}

// The two pixels a sample interpolates between along one axis, and their weights.
template <typename T>
struct AxisTaps {
  int64_t low;
  int64_t high;
  T low_weight;
  T high_weight;
};

// False when the sample contributes nothing: more than one pixel off the map (or an empty map).
// Samples within one pixel of the map are clamped onto it, as in torchvision.
template <typename T>
C10_HOST_DEVICE inline bool axis_taps(T coord, int64_t size, AxisTaps<T>& taps) {
  // Written as !(inside) so that NaN coordinates, for which every comparison is false, are out.
  if (size == 0 || !(coord >= T(-1) && coord <= static_cast<T>(size))) {
    return false;
  }
  if (coord <= T(0)) {
    coord = T(0);
  }
  taps.low = static_cast<int64_t>(coord);
  if (taps.low >= size - 1) {
    taps.low = size - 1;
    taps.high = size - 1;
    coord = static_cast<T>(taps.low);
  } else {
    taps.high = taps.low + 1;
  }
  taps.high_weight = coord - static_cast<T>(taps.low);
  taps.low_weight = T(1) - taps.high_weight;
  return true;
}

// Calls visit(offset, weight) for the four bilinear taps (offsets into a plane of `width`
// columns) of the sample with row taps `y` and column taps `x`, always in the same order.
template <typename T, typename Visit>
C10_HOST_DEVICE inline void visit_taps(const AxisTaps<T>& y, const AxisTaps<T>& x, int64_t width,
                                       Visit&& visit) {
  visit(y.low * width + x.low, y.low_weight * x.low_weight);
  visit(y.low * width + x.high, y.low_weight * x.high_weight);
  visit(y.high * width + x.low, y.high_weight * x.low_weight);
  visit(y.high * width + x.high, y.high_weight * x.high_weight);
}

// Calls visit(offset, weight) for the four bilinear taps (offsets into a height x width plane)
// of every sample of bin (ph, pw); the forward pass gathers through it, the backward scatters.
template <typename T, typename Visit>
C10_HOST_DEVICE inline void for_each_tap(const RoiBins<T>& bins, int64_t ph, int64_t pw,
                                         int64_t height, int64_t width, Visit&& visit) {
  for (int64_t iy = 0; iy < bins.grid_h; ++iy) {
    AxisTaps<T> y;
    if (!axis_taps(sample_coord(bins.start_h, bins.bin_h, ph, iy, bins.grid_h), height, y)) {
      continue;
    }
    for (int64_t ix = 0; ix < bins.grid_w; ++ix) {
      AxisTaps<T> x;
      if (!axis_taps(sample_coord(bins.start_w, bins.bin_w, pw, ix, bins.grid_w), width, x)) {
        continue;
      }
      visit_taps(y, x, width, visit);
    }
  }
}

// The average of the bilinear samples of bin (ph, pw) over one input plane.
template <typename T, typename scalar_t>
C10_HOST_DEVICE inline T pool_bin(const scalar_t* plane, const RoiBins<T>& bins, int64_t ph,
                                  int64_t pw, const Params<T>& p) {
  T sum = T(0);
  for_each_tap(bins, ph, pw, p.height, p.width,
               [&](int64_t offset, T weight) { sum += weight * static_cast<T>(plane[offset]); });
  return sum / bins.count();
}

// The argument checks of both devices (roi_align_common.cpp): every entry point runs them before
// it allocates or reads anything, so a bad argument is an exception with the same message on the
// CPU and on CUDA, never an out-of-range access. Batch indices are checked on the host, so on
// CUDA the call waits for the rois.
void check_forward_args(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                        int64_t pooled_width);
void check_backward_args(const at::Tensor& grad, const at::Tensor& rois, int64_t pooled_height,
                         int64_t pooled_width, int64_t batch, int64_t channels, int64_t height,
                         int64_t width);

// The CUDA kernels' launchers (roi_align_cuda.cu), called by the CUDA entry points after the
// checks.
at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width, int64_t sampling_ratio, bool aligned);
at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_height,
                                   int64_t pooled_width, int64_t batch, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio,
                                   bool aligned);

// Checks `out`, the tensor roi_align.out writes the pooled bins of `input` into.
inline void check_out(const at::Tensor& input, int64_t num_rois, int64_t pooled_height,
                      int64_t pooled_width, const at::Tensor& out) {
  const std::array<int64_t, 4> shape{num_rois, input.size(1), pooled_height, pooled_width};
  TORCH_CHECK(out.sizes() == at::IntArrayRef(shape),
              "roi_align: out must be a [K, C, pooled_height, pooled_width] = ",
              at::IntArrayRef(shape), " tensor, got shape ", out.sizes());
  TORCH_CHECK(out.scalar_type() == input.scalar_type() && out.device() == input.device(),
              "roi_align: out must have the input's dtype and device (", input.scalar_type(),
              " on ", input.device(), "), got ", out.scalar_type(), " on ", out.device());
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, input);
}

}  // namespace roi_align
}  // namespace mrcnn
