// Package v1 is the schema of gpulet's node agent configuration file.
//
// The file is NVIDIA k8s-device-plugin's "version: v1" configuration file,
// read as it is, plus a "gpulet:" section for settings of gpulet's own. One
// file serves both programs: NVIDIA's plugin ignores keys it does not know, so
// it skips the gpulet section, and gpulet reads every field of NVIDIA's v1
// schema, honouring the ones it implements and warning about the ones it does
// not.
//
// # Reading rules
//
//   - An empty file, or no file at all, gives the defaults (see [Default]).
//   - Invalid values are errors that name the file and the field path, for
//     example "config.yaml: sharing.timeSlicing.resources[0].replicas: must be
//     >= 1, got -1". All such errors are reported at once.
//   - Fields that gpulet models but does not implement (MPS, GPU feature
//     discovery, IMEX, the "index" device ID strategy, ...) produce warnings
//     rather than errors, and only when they ask for something gpulet will not
//     do: "flags.gdsEnabled: false" is silent, "flags.gdsEnabled: true" warns.
//
// # Unknown fields
//
// NVIDIA adds fields to its v1 schema from release to release (mpsRoot in
// v0.15, nvidiaDevRoot in v0.16, imex in v0.17, sharedDevicesAllocationPolicy
// in v0.20) without changing "version: v1", and NVIDIA's own parser ignores
// keys it does not know. Rejecting every unknown key would make gpulet fail to
// start on a ConfigMap that a newer NVIDIA plugin reads fine, so the policy
// is:
//
//   - Under "gpulet:", which gpulet owns, an unknown key is an error.
//   - Elsewhere, an unknown key is a warning and is ignored.
//   - Anywhere, a key that is a near miss of a known key (same letters in
//     another case, or one edit away, such as "timeslicing" or "replica") is an
//     error, because it is far more likely a typo than a new field, and a typo
//     in a sharing setting silently changes what a node advertises.
//   - Duplicate keys are errors everywhere.
package v1
