// CUDA kernels of mrcnn::roi_align and mrcnn::roi_align_backward (float32, float64, and
// float16/bfloat16 computed in float32). One thread per output (or output-gradient) element.
// The launchers below run after the entry points' checks (roi_align_common.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "roi_align_common.h"

namespace mrcnn {
namespace roi_align {
namespace {

constexpr int kThreadsPerBlock = 256;
// Enough blocks to fill any current GPU; larger outputs are covered by the grid-stride loops.
constexpr int64_t kMaxBlocks = 65536;

unsigned int num_blocks(int64_t num_threads) {
  return static_cast<unsigned int>(
      std::min((num_threads + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks));
}

// Position of a flat index into the [K, C, pooled_height, pooled_width] output.
struct BinIndex {
  int64_t roi;
  int64_t channel;
  int64_t ph;
  int64_t pw;
};

template <typename T>
__device__ BinIndex unflatten(int64_t index, const Params<T>& p) {
  BinIndex bin;
  bin.pw = index % p.pooled_width;
  index /= p.pooled_width;
  bin.ph = index % p.pooled_height;
  index /= p.pooled_height;
  bin.channel = index % p.channels;
  bin.roi = index / p.channels;
  return bin;
}

template <typename scalar_t, typename T>
__global__ void forward_kernel(const scalar_t* __restrict__ input, const T* __restrict__ rois,
                               const Params<T> p, int64_t num_bins, scalar_t* __restrict__ output) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       index < num_bins; index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const BinIndex bin = unflatten(index, p);
    const T* roi = rois + 5 * bin.roi;
    const T value =
        pool_bin(input + input_plane(roi, bin.channel, p), roi_bins(roi, p), bin.ph, bin.pw, p);
    output[index] = static_cast<scalar_t>(value);
  }
}

// Rois overlap, so the scatter into grad_input (of type T, float32 for half-precision grads)
// is atomic.
template <typename scalar_t, typename T>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, const T* __restrict__ rois,
                                const Params<T> p, int64_t num_bins, T* __restrict__ grad_input) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       index < num_bins; index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const BinIndex bin = unflatten(index, p);
    const T* roi = rois + 5 * bin.roi;
    const RoiBins<T> bins = roi_bins(roi, p);
    T* grad_plane = grad_input + input_plane(roi, bin.channel, p);
    const T scale = static_cast<T>(grad[index]) / bins.count();
    for_each_tap(bins, bin.ph, bin.pw, p.height, p.width, [&](int64_t offset, T weight) {
      gpuAtomicAdd(grad_plane + offset, scale * weight);
    });
  }
}

}  // namespace

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  at::Tensor output =
      at::empty({rois.size(0), input.size(1), pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor input_ = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        const at::Tensor rois_ = rois.to(c10::CppTypeToScalarType<T>::value).contiguous();
        const Params<T> p = make_params<T>(spatial_scale, input.size(1), input.size(2),
                                           input.size(3), pooled_height, pooled_width,
                                           sampling_ratio, aligned);
        forward_kernel<<<num_blocks(output.numel()), kThreadsPerBlock, 0,
                         c10::cuda::getCurrentCUDAStream()>>>(
            input_.const_data_ptr<scalar_t>(), rois_.const_data_ptr<T>(), p, output.numel(),
            output.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_height,
                                   int64_t pooled_width, int64_t batch, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio,
                                   bool aligned) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const at::Tensor grad_ = grad.contiguous();
  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        // Half-precision gradients accumulate in float32 and are rounded once at the end.
        grad_input = at::zeros({batch, channels, height, width},
                               grad.options().dtype(c10::CppTypeToScalarType<T>::value));
        if (grad.numel() == 0) {
          return;
        }
        const at::Tensor rois_ = rois.to(c10::CppTypeToScalarType<T>::value).contiguous();
        const Params<T> p = make_params<T>(spatial_scale, channels, height, width, pooled_height,
                                           pooled_width, sampling_ratio, aligned);
        backward_kernel<<<num_blocks(grad.numel()), kThreadsPerBlock, 0,
                          c10::cuda::getCurrentCUDAStream()>>>(
            grad_.const_data_ptr<scalar_t>(), rois_.const_data_ptr<T>(), p, grad.numel(),
            grad_input.mutable_data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_input.to(grad.scalar_type());
}

}  // namespace roi_align
}  // namespace mrcnn
