// Package v1alpha1 is the opaque device configuration of gpulet's DRA
// driver, API group gpu.gpulet.dev, version v1alpha1.
//
// A ResourceClaim (or DeviceClass) passes it to the driver in
// spec.devices.config[].opaque.parameters:
//
//	config:
//	- opaque:
//	    driver: gpu.gpulet.dev
//	    parameters:
//	      apiVersion: gpu.gpulet.dev/v1alpha1
//	      kind: GpuConfig
//	      sharing:
//	        strategy: TimeSlicing
//	        timeSlicingConfig:
//	          interval: Long
//
// Anyone who may create a claim in any namespace writes these parameters,
// so [Decode] treats them as hostile input: it is strict (unknown kinds,
// versions and fields, duplicate fields and trailing data are errors), it
// bounds the input size, and every value in these types is an enumeration
// checked by Validate. Nothing here is, or may become, a file path or a
// command argument without passing through those enumerations.
package v1alpha1
