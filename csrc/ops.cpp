// Schemas of the mrcnn operators. Each kernel file registers its implementation for one
// device with TORCH_LIBRARY_IMPL, so a single op name dispatches to the CPU or CUDA kernel. The
// out= variants have a CPU kernel that writes in place; on CUDA they compute the result and copy
// it into `out`, as defined here. They return nothing (the caller holds `out`), so that
// torch.compile can functionalise them.
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "crop_and_resize.h"
#include "roi_align_common.h"

namespace mrcnn {
namespace {

void crop_and_resize_out_by_copy(const at::Tensor& image, const at::Tensor& boxes,
                                 const at::Tensor& box_ind, int64_t crop_height,
                                 int64_t crop_width, double extrapolation_value, at::Tensor& out) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mrcnn::crop_and_resize", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                            int64_t, double)>();
  const at::Tensor crops =
      op.call(image, boxes, box_ind, crop_height, crop_width, extrapolation_value);
  crop_and_resize::check_out(image, boxes.size(0), crop_height, crop_width, out);
  out.copy_(crops);
}

void roi_align_out_by_copy(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                           int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                           bool aligned, at::Tensor& out) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mrcnn::roi_align", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t,
                            int64_t, bool)>();
  const at::Tensor pooled =
      op.call(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
  roi_align::check_out(input, rois.size(0), pooled_height, pooled_width, out);
  out.copy_(pooled);
}

}  // namespace
}  // namespace mrcnn

TORCH_LIBRARY(mrcnn, m) {
  // Greedy non-maximum suppression with tf.image.non_max_suppression semantics. With `idxs`,
  // boxes only suppress boxes of the same idxs value and max_output_size holds per value.
  // max_output_size < 0 means unlimited.
  m.def(
      "nms(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold, "
      "int max_output_size, float score_threshold) -> Tensor");
  // tf.image.crop_and_resize (bilinear) of [N, C, H, W] maps, NCHW or channels last. The
  // crops [K, C, crop_height, crop_width] (and the gradient of the backward) come out in the
  // layout the map is read in (channels last for a channels-last map); the values are the same.
  m.def(
      "crop_and_resize(Tensor image, Tensor boxes, Tensor box_ind, int crop_height, "
      "int crop_width, float extrapolation_value) -> Tensor");
  m.def(
      "crop_and_resize.out(Tensor image, Tensor boxes, Tensor box_ind, int crop_height, "
      "int crop_width, float extrapolation_value, *, Tensor(a!) out) -> ()");
  m.def(
      "crop_and_resize_backward(Tensor grad, Tensor boxes, Tensor box_ind, int batch, "
      "int channels, int height, int width) -> Tensor");
  // torchvision.ops.roi_align semantics, of NCHW or channels-last maps, which give results (and
  // gradients) in their layout, as crop_and_resize.
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "roi_align.out(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, int sampling_ratio, bool aligned, *, Tensor(a!) out) -> ()");
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, int batch, int channels, int height, int width, int sampling_ratio, "
      "bool aligned) -> Tensor");
}

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) {
  m.impl("crop_and_resize.out", &mrcnn::crop_and_resize_out_by_copy);
  m.impl("roi_align.out", &mrcnn::roi_align_out_by_copy);
}

// Makes `import mrcnn._C` load this library (and so run the registrations above); the module
// itself has no Python attributes.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
