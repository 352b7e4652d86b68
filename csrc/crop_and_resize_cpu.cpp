// CPU kernels of mrcnn::crop_and_resize and of its image gradient.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"
#include "crop_and_resize.h"

namespace mrcnn {
namespace crop_and_resize {
namespace {

void check_cpu_dtype(const char* op, const char* name, const at::Tensor& tensor) {
  TORCH_CHECK(tensor.scalar_type() == at::kFloat || tensor.scalar_type() == at::kDouble, op,
              " on the CPU supports float32 and float64, got a ", tensor.scalar_type(), " ", name,
              " (float16 and bfloat16 need CUDA)");
}

// The row and the column samples of every box, computed once and shared by all channels:
// box k's rows are rows[k * crop_height, (k + 1) * crop_height), its columns likewise.
template <typename scalar_t>
struct BoxSamples {
  std::vector<AxisSample<scalar_t>> rows;
  std::vector<AxisSample<scalar_t>> cols;
};

template <typename scalar_t>
BoxSamples<scalar_t> sample_boxes(const KernelBoxes& kernel_boxes, int64_t crop_height,
                                  int64_t crop_width, int64_t height, int64_t width) {
  const int64_t num_boxes = kernel_boxes.boxes.size(0);
  const scalar_t* box = kernel_boxes.boxes.const_data_ptr<scalar_t>();
  BoxSamples<scalar_t> samples{std::vector<AxisSample<scalar_t>>(num_boxes * crop_height),
                               std::vector<AxisSample<scalar_t>>(num_boxes * crop_width)};
  for (int64_t k = 0; k < num_boxes; ++k, box += 4) {
    for (int64_t y = 0; y < crop_height; ++y) {
      samples.rows[k * crop_height + y] = axis_sample(box[0], box[2], y, crop_height, height);
    }
    for (int64_t x = 0; x < crop_width; ++x) {
      samples.cols[k * crop_width + x] = axis_sample(box[1], box[3], x, crop_width, width);
    }
  }
  return samples;
}

// Parallel over channels, and within a channel box after box: all the boxes of a channel read
// the same image plane, which stays in cache, where visiting the channels of one box after the
// other would fetch a new plane from memory for every (box, channel).
template <typename scalar_t>
void forward_kernel(const at::Tensor& image, const KernelBoxes& kernel_boxes,
                    scalar_t extrapolation_value, at::Tensor& crops) {
  const int64_t num_boxes = crops.size(0);
  const int64_t channels = image.size(1);
  const int64_t width = image.size(3);
  const int64_t crop_height = crops.size(2);
  const int64_t crop_width = crops.size(3);
  const int64_t plane = image.size(2) * width;
  const int64_t crop_plane = crop_height * crop_width;
  const BoxSamples<scalar_t> samples =
      sample_boxes<scalar_t>(kernel_boxes, crop_height, crop_width, image.size(2), width);
  const scalar_t* image_data = image.const_data_ptr<scalar_t>();
  const int64_t* box_ind = kernel_boxes.box_ind.const_data_ptr<int64_t>();
  scalar_t* crops_data = crops.mutable_data_ptr<scalar_t>();

  const int64_t grain =
      std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(num_boxes * crop_plane, 1));
  at::parallel_for(0, channels, grain, [&](int64_t channel_begin, int64_t channel_end) {
    for (int64_t c = channel_begin; c < channel_end; ++c) {
      for (int64_t box = 0; box < num_boxes; ++box) {
        const scalar_t* in = image_data + (box_ind[box] * channels + c) * plane;
        scalar_t* out = crops_data + (box * channels + c) * crop_plane;
        const AxisSample<scalar_t>* cols = &samples.cols[box * crop_width];
        for (int64_t y = 0; y < crop_height; ++y, out += crop_width) {
          const AxisSample<scalar_t>& row = samples.rows[box * crop_height + y];
          if (!row.inside) {
            std::fill_n(out, crop_width, extrapolation_value);
            continue;
          }
          const scalar_t* top = in + row.low * width;
          const scalar_t* bottom = in + row.high * width;
          for (int64_t x = 0; x < crop_width; ++x) {
            const AxisSample<scalar_t>& col = cols[x];
            out[x] = col.inside ? blend(top[col.low], top[col.high], bottom[col.low],
                                        bottom[col.high], col.lerp, row.lerp)
                                : extrapolation_value;
          }
        }
      }
    }
  });
}

// Parallel over channels: each thread zeroes and then adds into channel planes of its own, so
// no two threads write one value and every value sums its terms in TF's order (box, y, x,
// corner), whatever the number of threads. Within a channel the boxes come one after the other,
// as in the forward, so that the plane they add into stays in cache from its zeroing on.
template <typename scalar_t>
void backward_kernel(const at::Tensor& grad, const KernelBoxes& kernel_boxes,
                     at::Tensor& grad_image) {
  const int64_t num_boxes = grad.size(0);
  const int64_t channels = grad.size(1);
  const int64_t crop_height = grad.size(2);
  const int64_t crop_width = grad.size(3);
  const int64_t width = grad_image.size(3);
  const int64_t plane = grad_image.size(2) * width;
  const int64_t crop_plane = crop_height * crop_width;
  const BoxSamples<scalar_t> samples =
      sample_boxes<scalar_t>(kernel_boxes, crop_height, crop_width, grad_image.size(2), width);
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const int64_t* box_ind = kernel_boxes.box_ind.const_data_ptr<int64_t>();
  scalar_t* grad_image_data = grad_image.mutable_data_ptr<scalar_t>();

  const int64_t grain =
      std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(num_boxes * crop_plane, 1));
  at::parallel_for(0, channels, grain, [&](int64_t channel_begin, int64_t channel_end) {
    for (int64_t c = channel_begin; c < channel_end; ++c) {
      for (int64_t n = 0; n < grad_image.size(0); ++n) {
        std::fill_n(grad_image_data + (n * channels + c) * plane, plane, scalar_t(0));
      }
      for (int64_t box = 0; box < num_boxes; ++box) {
        const scalar_t* grad_plane = grad_data + (box * channels + c) * crop_plane;
        scalar_t* target = grad_image_data + (box_ind[box] * channels + c) * plane;
        const AxisSample<scalar_t>* cols = &samples.cols[box * crop_width];
        for (int64_t y = 0; y < crop_height; ++y, grad_plane += crop_width) {
          const AxisSample<scalar_t>& row = samples.rows[box * crop_height + y];
          if (!row.inside) {
            continue;
          }
          scalar_t* top = target + row.low * width;
          scalar_t* bottom = target + row.high * width;
          for (int64_t x = 0; x < crop_width; ++x) {
            const AxisSample<scalar_t>& col = cols[x];
            if (!col.inside) {
              continue;
            }
            // Corner by corner in TF's order (top left, top right, bottom left, bottom right).
            const CornerGradients<scalar_t> gradients =
                corner_gradients(grad_plane[x], row.lerp, col.lerp);
            top[col.low] += gradients.share[0];
            top[col.high] += gradients.share[1];
            bottom[col.low] += gradients.share[2];
            bottom[col.high] += gradients.share[3];
          }
        }
      }
    }
  });
}

// The channels-last kernels. A sample reads (or adds into) the channels of its four corner
// pixels as four contiguous vectors, so that one vector loop blends all channels at once; each
// value is the same expression of the same four values as in the NCHW kernels, hence the same
// result. The samples are visited tile by tile of the map (cpu::Tiling).

// Blends one sample of all channels; with Stream, `out` aligned to Bytes, past the caches.
template <int Bytes, bool Stream, typename T>
MRCNN_ALWAYS_INLINE void blend_channels(const T* top_left, const T* top_right,
                                        const T* bottom_left, const T* bottom_right, T x_lerp,
                                        T y_lerp, T* out, int64_t channels) {
  using V = typename simd::Vec<T, Bytes>::type;
  constexpr int64_t lanes = simd::Vec<T, Bytes>::lanes;
  int64_t c = 0;
  for (; c + lanes <= channels; c += lanes) {
    const V tl = simd::load<T, Bytes>(top_left + c);
    const V bl = simd::load<T, Bytes>(bottom_left + c);
    const V top = tl + (simd::load<T, Bytes>(top_right + c) - tl) * x_lerp;
    const V bottom = bl + (simd::load<T, Bytes>(bottom_right + c) - bl) * x_lerp;
    if constexpr (Stream) {
      simd::store_streaming<T, Bytes>(out + c, top + (bottom - top) * y_lerp);
    } else {
      simd::store<T, Bytes>(out + c, top + (bottom - top) * y_lerp);
    }
  }
  for (; c < channels; ++c) {
    out[c] = blend(top_left[c], top_right[c], bottom_left[c], bottom_right[c], x_lerp, y_lerp);
  }
}

// Adds weight_x * (weight_y * grad) to `pixel`, all channels: one corner's share of a sample's
// gradient, in corner_gradients' arithmetic.
template <int Bytes, typename T>
MRCNN_ALWAYS_INLINE void add_share(const T* grad, T weight_y, T weight_x, T* pixel,
                                   int64_t channels) {
  constexpr int64_t lanes = simd::Vec<T, Bytes>::lanes;
  int64_t c = 0;
  for (; c + lanes <= channels; c += lanes) {
    simd::store<T, Bytes>(pixel + c, simd::load<T, Bytes>(pixel + c) +
                                         weight_x * (weight_y * simd::load<T, Bytes>(grad + c)));
  }
  for (; c < channels; ++c) {
    pixel[c] += weight_x * (weight_y * grad[c]);
  }
}

// The crops of channels-last maps: an image (or its gradient) [N, H, W, C] and the crops (or
// their gradient) [K, crop_height, crop_width, C], with the samples of every box. Sample s is
// (box, y, x) with s = (box * crop_height + y) * crop_width + x.
template <typename T>
struct TiledCrops {
  const BoxSamples<T>* samples;
  const int64_t* box_ind;
  int64_t num_boxes, height, width, channels, crop_height, crop_width;
  cpu::Tiling tiling;
  cpu::TileGroups groups;

  TiledCrops(const BoxSamples<T>& samples_, const KernelBoxes& kernel_boxes, int64_t batch,
             int64_t height_, int64_t width_, int64_t channels_, int64_t crop_height_,
             int64_t crop_width_)
      : samples(&samples_),
        box_ind(kernel_boxes.box_ind.const_data_ptr<int64_t>()),
        num_boxes(kernel_boxes.box_ind.size(0)),
        height(height_),
        width(width_),
        channels(channels_),
        crop_height(crop_height_),
        crop_width(crop_width_),
        tiling(batch, height, width, channels * static_cast<int64_t>(sizeof(T))) {}

  int64_t num_samples() const { return num_boxes * crop_height * crop_width; }
  int64_t box(int64_t sample) const { return sample / (crop_height * crop_width); }
  const AxisSample<T>& row(int64_t sample) const { return samples->rows[sample / crop_width]; }
  const AxisSample<T>& col(int64_t sample) const {
    return samples->cols[box(sample) * crop_width + sample % crop_width];
  }
  // Offset of channel 0 of pixel (y, x) of the image of `sample`'s box.
  int64_t pixel(int64_t sample, int64_t y, int64_t x) const {
    return ((box_ind[box(sample)] * height + y) * width + x) * channels;
  }
};

// Fills crops [K, crop_height, crop_width, C] from image [N, H, W, C].
template <typename T>
struct CropTiles {
  const TiledCrops<T>* crops;
  const T* image;
  T extrapolation_value;
  T* out;
  bool stream;  // write the crops past the caches

  template <int Bytes>
  MRCNN_ALWAYS_INLINE void run(int64_t first, int64_t last) const {
    const TiledCrops<T>& p = *crops;
    const int64_t channels = p.channels;
    // Streaming needs every sample's first channel aligned to the vector.
    const bool aligned = stream && reinterpret_cast<uintptr_t>(out) % Bytes == 0 &&
                         channels * sizeof(T) % Bytes == 0;
    for (int64_t t = first; t < last; ++t) {
      const int64_t units = p.groups.begin[t + 1] - p.groups.begin[t];
      cpu::TilePrefetcher next(p.tiling, image, channels * sizeof(T), t + 1, units);
      for (int64_t i = p.groups.begin[t]; i < p.groups.begin[t + 1]; ++i) {
        next.step();
        crop_sample<Bytes>(p.groups.units[i], aligned);
      }
    }
    if (aligned) {
      simd::streaming_done();
    }
  }

  template <int Bytes>
  MRCNN_ALWAYS_INLINE void crop_sample(int64_t sample, bool aligned) const {
    const TiledCrops<T>& p = *crops;
    const AxisSample<T>& row = p.row(sample);
    const AxisSample<T>& col = p.col(sample);
    T* dst = out + sample * p.channels;
    if (!(row.inside && col.inside)) {
      std::fill_n(dst, p.channels, extrapolation_value);
      return;
    }
    const T* top_left = image + p.pixel(sample, row.low, col.low);
    const T* top_right = image + p.pixel(sample, row.low, col.high);
    const T* bottom_left = image + p.pixel(sample, row.high, col.low);
    const T* bottom_right = image + p.pixel(sample, row.high, col.high);
    if (aligned) {
      blend_channels<Bytes, true>(top_left, top_right, bottom_left, bottom_right, col.lerp,
                                  row.lerp, dst, p.channels);
    } else {
      blend_channels<Bytes, false>(top_left, top_right, bottom_left, bottom_right, col.lerp,
                                   row.lerp, dst, p.channels);
    }
  }
};

// Adds the gradient of the crops [K, crop_height, crop_width, C] into grad_image [N, H, W, C],
// tile by tile: a tile's pixels are zeroed, then get the shares of the samples listed under
// the tile whose corners fall in it, sample after sample and corner after corner. Every value
// thus sums its terms in TF's order (box, y, x, corner), and no two threads write one value.
template <typename T>
struct ScatterTiles {
  const TiledCrops<T>* crops;
  const T* grad;
  T* grad_image;

  template <int Bytes>
  MRCNN_ALWAYS_INLINE void run(int64_t first, int64_t last) const {
    const TiledCrops<T>& p = *crops;
    const int64_t channels = p.channels;
    for (int64_t t = first; t < std::min(last, p.tiling.count); ++t) {
      const cpu::Tiling::Bounds tile = p.tiling.bounds(t);
      for (int64_t y = tile.y_begin; y < tile.y_end; ++y) {
        std::fill_n(grad_image + ((tile.image * p.height + y) * p.width + tile.x_begin) * channels,
                    (tile.x_end - tile.x_begin) * channels, T(0));
      }
      for (int64_t i = p.groups.begin[t]; i < p.groups.begin[t + 1]; ++i) {
        if (i + cpu::kPrefetchDistance < p.groups.begin[t + 1]) {
          cpu::prefetch(grad + p.groups.units[i + cpu::kPrefetchDistance] * channels,
                        channels * sizeof(T));
        }
        const int64_t sample = p.groups.units[i];
        const AxisSample<T>& row = p.row(sample);
        const AxisSample<T>& col = p.col(sample);
        const T* g = grad + sample * channels;
        const int64_t ys[2] = {row.low, row.high};
        const int64_t xs[2] = {col.low, col.high};
        const T weights_y[2] = {T(1) - row.lerp, row.lerp};
        const T weights_x[2] = {T(1) - col.lerp, col.lerp};
        for (int corner = 0; corner < 4; ++corner) {
          const int64_t y = ys[corner / 2];
          const int64_t x = xs[corner % 2];
          if (tile.contains(y, x)) {
            add_share<Bytes>(g, weights_y[corner / 2], weights_x[corner % 2],
                             grad_image + p.pixel(sample, y, x), channels);
          }
        }
      }
    }
  }
};

// Calls visit(sample, row, col, image) for every sample, in order.
template <typename T, typename Visit>
void for_each_sample(const TiledCrops<T>& p, Visit&& visit) {
  int64_t sample = 0;
  for (int64_t box = 0; box < p.num_boxes; ++box) {
    const AxisSample<T>* rows = &p.samples->rows[box * p.crop_height];
    const AxisSample<T>* cols = &p.samples->cols[box * p.crop_width];
    for (int64_t y = 0; y < p.crop_height; ++y) {
      for (int64_t x = 0; x < p.crop_width; ++x, ++sample) {
        visit(sample, rows[y], cols[x], p.box_ind[box]);
      }
    }
  }
}

// Every sample inside the image under the tile of its top-left corner, the others (which take
// the extrapolation value) in the extra group.
template <typename T>
void group_by_top_left(TiledCrops<T>& p) {
  const cpu::Tiling& tiling = p.tiling;
  p.groups = cpu::group_units(tiling.count + 1, [&](auto add) {
    for_each_sample(p, [&](int64_t sample, const AxisSample<T>& row, const AxisSample<T>& col,
                           int64_t image) {
      add(sample, row.inside && col.inside ? tiling.tile(image, row.low, col.low) : tiling.count);
    });
  });
}

// Every sample inside the image under each tile one of its corners falls in.
template <typename T>
void group_by_corners(TiledCrops<T>& p) {
  const cpu::Tiling& tiling = p.tiling;
  p.groups = cpu::group_units(tiling.count + 1, [&](auto add) {
    for_each_sample(p, [&](int64_t sample, const AxisSample<T>& row, const AxisSample<T>& col,
                           int64_t image) {
      if (!(row.inside && col.inside)) {
        return;
      }
      const int64_t tiles[4] = {
          tiling.tile(image, row.low, col.low), tiling.tile(image, row.low, col.high),
          tiling.tile(image, row.high, col.low), tiling.tile(image, row.high, col.high)};
      for (int corner = 0; corner < 4; ++corner) {
        if (std::find(tiles, tiles + corner, tiles[corner]) == tiles + corner) {
          add(sample, tiles[corner]);
        }
      }
    });
  });
}

template <typename T>
void forward_kernel_channels_last(const at::Tensor& image, const KernelBoxes& kernel_boxes,
                                  T extrapolation_value, at::Tensor& crops) {
  const int64_t channels = image.size(1);
  const BoxSamples<T> samples = sample_boxes<T>(kernel_boxes, crops.size(2), crops.size(3),
                                                image.size(2), image.size(3));
  TiledCrops<T> tiled(samples, kernel_boxes, image.size(0), image.size(2), image.size(3),
                      channels, crops.size(2), crops.size(3));
  group_by_top_left(tiled);
  const CropTiles<T> kernel{&tiled, image.const_data_ptr<T>(), extrapolation_value,
                            crops.mutable_data_ptr<T>(), crops.nbytes() >= cpu::kStreamingBytes};
  const auto crop_tiles = simd::best<CropTiles<T>, int64_t, int64_t>();
  cpu::parallel_over_groups(tiled.groups, channels, [&](int64_t first, int64_t last) {
    crop_tiles(kernel, first, last);
  });
}

template <typename T>
void backward_kernel_channels_last(const at::Tensor& grad, const KernelBoxes& kernel_boxes,
                                   at::Tensor& grad_image) {
  const int64_t channels = grad.size(1);
  const BoxSamples<T> samples = sample_boxes<T>(kernel_boxes, grad.size(2), grad.size(3),
                                                grad_image.size(2), grad_image.size(3));
  TiledCrops<T> tiled(samples, kernel_boxes, grad_image.size(0), grad_image.size(2),
                      grad_image.size(3), channels, grad.size(2), grad.size(3));
  group_by_corners(tiled);
  const ScatterTiles<T> kernel{&tiled, grad.const_data_ptr<T>(),
                               grad_image.mutable_data_ptr<T>()};
  const auto scatter_tiles = simd::best<ScatterTiles<T>, int64_t, int64_t>();
  // Four corners a sample.
  cpu::parallel_over_groups(tiled.groups, 4 * channels, [&](int64_t first, int64_t last) {
    scatter_tiles(kernel, first, last);
  });
}

// Fills `crops` ([K, C, crop_height, crop_width], laid out as the image is read: channels last
// or NCHW, contiguous).
void fill_crops(const at::Tensor& image, const KernelBoxes& kernel_boxes,
                double extrapolation_value, bool channels_last, at::Tensor& crops) {
  const at::Tensor input = image.contiguous(cpu::memory_format(channels_last));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "crop_and_resize_cpu", [&] {
    const auto extrapolation = static_cast<scalar_t>(extrapolation_value);
    if (channels_last) {
      forward_kernel_channels_last<scalar_t>(input, kernel_boxes, extrapolation, crops);
    } else {
      forward_kernel<scalar_t>(input, kernel_boxes, extrapolation, crops);
    }
  });
}

at::Tensor crop_and_resize_cpu(const at::Tensor& image, const at::Tensor& boxes,
                               const at::Tensor& box_ind, int64_t crop_height, int64_t crop_width,
                               double extrapolation_value) {
  const KernelBoxes kernel_boxes =
      check_forward_args(image, boxes, box_ind, crop_height, crop_width);
  check_cpu_dtype("crop_and_resize", "image", image);
  const bool channels_last = cpu::is_channels_last(image);
  at::Tensor crops = cpu::empty_output({boxes.size(0), image.size(1), crop_height, crop_width},
                                       image.options(), channels_last);
  fill_crops(image, kernel_boxes, extrapolation_value, channels_last, crops);
  return crops;
}

// Writes straight into `out` when it is laid out as the kernel writes (as crop_and_resize would
// return it), else through a copy.
void crop_and_resize_out_cpu(const at::Tensor& image, const at::Tensor& boxes,
                             const at::Tensor& box_ind, int64_t crop_height, int64_t crop_width,
                             double extrapolation_value, at::Tensor& out) {
  const KernelBoxes kernel_boxes =
      check_forward_args(image, boxes, box_ind, crop_height, crop_width);
  check_cpu_dtype("crop_and_resize", "image", image);
  check_out(image, boxes.size(0), crop_height, crop_width, out);
  const bool channels_last = cpu::is_channels_last(image);
  if (out.is_contiguous(cpu::memory_format(channels_last))) {
    fill_crops(image, kernel_boxes, extrapolation_value, channels_last, out);
  } else {
    out.copy_(crop_and_resize_cpu(image, boxes, box_ind, crop_height, crop_width,
                                  extrapolation_value));
  }
}

// The gradient comes out in the layout of `grad`: channels last for a channels-last grad.
at::Tensor crop_and_resize_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes,
                                        const at::Tensor& box_ind, int64_t batch,
                                        int64_t channels, int64_t height, int64_t width) {
  const KernelBoxes kernel_boxes =
      check_backward_args(grad, boxes, box_ind, batch, channels, height, width);
  check_cpu_dtype("crop_and_resize_backward", "grad", grad);
  const bool channels_last = cpu::is_channels_last(grad);
  const at::Tensor grad_crops = grad.contiguous(cpu::memory_format(channels_last));
  at::Tensor grad_image =
      cpu::empty_output({batch, channels, height, width}, grad.options(), channels_last);
  AT_DISPATCH_FLOATING_TYPES(grad_crops.scalar_type(), "crop_and_resize_backward_cpu", [&] {
    if (channels_last) {
      backward_kernel_channels_last<scalar_t>(grad_crops, kernel_boxes, grad_image);
    } else {
      backward_kernel<scalar_t>(grad_crops, kernel_boxes, grad_image);
    }
  });
  return grad_image;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) {
  m.impl("crop_and_resize", &crop_and_resize_cpu);
  m.impl("crop_and_resize.out", &crop_and_resize_out_cpu);
  m.impl("crop_and_resize_backward", &crop_and_resize_backward_cpu);
}

}  // namespace crop_and_resize
}  // namespace mrcnn
