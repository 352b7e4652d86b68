// CUDA kernels of mrcnn::crop_and_resize and of its image gradient: one thread per element of
// the [K, C, crop_height, crop_width] crops, computing in float (double for float64 images).
// The launchers below run after the entry points' checks (crop_and_resize_common.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "crop_and_resize.h"

namespace mrcnn {
namespace crop_and_resize {
namespace {

constexpr int kThreads = 256;

// The kernels loop with a grid stride, so the grid may be smaller than the work.
unsigned int num_blocks(int64_t count) {
  return static_cast<unsigned int>(
      std::min<int64_t>((count + kThreads - 1) / kThreads, int64_t{1} << 20));
}

// Element `index` of a [K, C, crop_height, crop_width] tensor. 64-bit: K * C * crop size can
// pass 2^31.
struct CropElement {
  int64_t box;
  int64_t channel;
  int64_t y;
  int64_t x;
};

__device__ inline CropElement crop_element(int64_t index, int64_t channels, int64_t crop_height,
                                           int64_t crop_width) {
  const int64_t plane = index / (crop_height * crop_width);
  return {plane / channels, plane % channels, index / crop_width % crop_height,
          index % crop_width};
}

template <typename T>
__device__ inline BilinearSample<T> element_sample(const T* boxes, const CropElement& element,
                                                   int64_t crop_height, int64_t crop_width,
                                                   int64_t height, int64_t width) {
  const T* box = boxes + 4 * element.box;
  return bilinear_sample(axis_sample(box[0], box[2], element.y, crop_height, height),
                         axis_sample(box[1], box[3], element.x, crop_width, width), width);
}

template <typename scalar_t, typename opmath_t>
__global__ void forward_kernel(const scalar_t* __restrict__ image,
                               const opmath_t* __restrict__ boxes,
                               const int64_t* __restrict__ box_ind, int64_t count,
                               int64_t channels, int64_t height, int64_t width,
                               int64_t crop_height, int64_t crop_width,
                               scalar_t extrapolation_value,
                               scalar_t* __restrict__ crops) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < count;
       index += stride) {
    const CropElement element = crop_element(index, channels, crop_height, crop_width);
    const BilinearSample<opmath_t> sample =
        element_sample(boxes, element, crop_height, crop_width, height, width);
    const scalar_t* plane =
        image + (box_ind[element.box] * channels + element.channel) * height * width;
    crops[index] = sample.inside ? static_cast<scalar_t>(interpolate(plane, sample))
                                 : extrapolation_value;
  }
}

// Adds into `grad_image` of opmath_t: atomics on float16/bfloat16 would round every partial sum.
template <typename scalar_t, typename opmath_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad,
                                const opmath_t* __restrict__ boxes,
                                const int64_t* __restrict__ box_ind, int64_t count,
                                int64_t channels, int64_t height, int64_t width,
                                int64_t crop_height, int64_t crop_width,
                                opmath_t* __restrict__ grad_image) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < count;
       index += stride) {
    const CropElement element = crop_element(index, channels, crop_height, crop_width);
    const BilinearSample<opmath_t> sample =
        element_sample(boxes, element, crop_height, crop_width, height, width);
    if (!sample.inside) {
      continue;
    }
    const CornerGradients<opmath_t> gradients =
        corner_gradients(static_cast<opmath_t>(grad[index]), sample);
    opmath_t* plane =
        grad_image + (box_ind[element.box] * channels + element.channel) * height * width;
    for (int corner = 0; corner < 4; ++corner) {
      gpuAtomicAddNoReturn(plane + sample.corner[corner], gradients.share[corner]);
    }
  }
}

}  // namespace

at::Tensor crop_and_resize_cuda(const at::Tensor& image, const KernelBoxes& kernel_boxes,
                                int64_t crop_height, int64_t crop_width,
                                double extrapolation_value) {
  const c10::cuda::CUDAGuard device_guard(image.device());
  const at::Tensor input = image.contiguous();
  at::Tensor crops =
      at::empty({kernel_boxes.boxes.size(0), image.size(1), crop_height, crop_width},
                input.options());
  const int64_t count = crops.numel();
  if (count == 0) {
    return crops;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "crop_and_resize_cuda", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        forward_kernel<scalar_t, opmath_t>
            <<<num_blocks(count), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                input.const_data_ptr<scalar_t>(), kernel_boxes.boxes.const_data_ptr<opmath_t>(),
                kernel_boxes.box_ind.const_data_ptr<int64_t>(), count, input.size(1),
                input.size(2), input.size(3), crop_height, crop_width,
                static_cast<scalar_t>(extrapolation_value), crops.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return crops;
}

at::Tensor crop_and_resize_backward_cuda(const at::Tensor& grad, const KernelBoxes& kernel_boxes,
                                         int64_t batch, int64_t channels, int64_t height,
                                         int64_t width) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const at::Tensor grad_crops = grad.contiguous();
  at::Tensor grad_image;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_crops.scalar_type(), "crop_and_resize_backward_cuda", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const at::ScalarType accumulate_dtype = c10::CppTypeToScalarType<opmath_t>::value;
        grad_image = at::zeros({batch, channels, height, width},
                               grad_crops.options().dtype(accumulate_dtype));
        const int64_t count = grad_crops.numel();
        if (count == 0) {
          return;
        }
        backward_kernel<scalar_t, opmath_t>
            <<<num_blocks(count), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                grad_crops.const_data_ptr<scalar_t>(),
                kernel_boxes.boxes.const_data_ptr<opmath_t>(),
                kernel_boxes.box_ind.const_data_ptr<int64_t>(), count, channels, height, width,
                grad_crops.size(2), grad_crops.size(3), grad_image.mutable_data_ptr<opmath_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_image.to(grad.scalar_type());
}

}  // namespace crop_and_resize
}  // namespace mrcnn
