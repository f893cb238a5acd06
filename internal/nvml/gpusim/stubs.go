package gpusim

import (
	"reflect"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// go-nvml's mocks leave every method nil, and a nil mock method panics.
// The simulator implements what gpulet, go-nvlib, go-gpuallocator and
// nvcdi call and fills the rest of each mock with stubs that answer like
// NVML on hardware without the feature: zero values and
// ERROR_NOT_SUPPORTED (or ERROR_GPU_IS_LOST / ERROR_UNINITIALIZED when
// those come first). Stubbed calls go through the mock, which records each
// call; the methods implemented here do not.

var returnType = reflect.TypeFor[nvml.Return]()

// fillStubs sets every nil ...Func field of the go-nvml mock struct that
// mockPtr points to.
func fillStubs(mockPtr any, ret func() nvml.Return) {
	v := reflect.ValueOf(mockPtr).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() || f.Type.Kind() != reflect.Func || !strings.HasSuffix(f.Name, "Func") {
			continue
		}
		if fv := v.Field(i); fv.IsNil() {
			fv.Set(reflect.MakeFunc(f.Type, stubFunc(f.Type, ret)))
		}
	}
}

func stubFunc(ft reflect.Type, ret func() nvml.Return) func([]reflect.Value) []reflect.Value {
	return func([]reflect.Value) []reflect.Value {
		out := make([]reflect.Value, ft.NumOut())
		var r reflect.Value
		for i := range out {
			if ft.Out(i) == returnType {
				if !r.IsValid() {
					r = reflect.ValueOf(ret())
				}
				out[i] = r
			} else {
				out[i] = reflect.Zero(ft.Out(i))
			}
		}
		return out
	}
}

// handleTypes are the handle interfaces whose methods the library-level
// functions mirror: nvml.Interface's DeviceGetFoo(device, ...) is
// device.GetFoo(...), GpuInstanceDestroy(gi) is gi.Destroy(), and so on.
var handleTypes = map[reflect.Type]string{
	reflect.TypeFor[nvml.Device]():          "Device",
	reflect.TypeFor[nvml.GpuInstance]():     "GpuInstance",
	reflect.TypeFor[nvml.ComputeInstance](): "ComputeInstance",
	reflect.TypeFor[nvml.EventSet]():        "EventSet",
	reflect.TypeFor[nvml.Unit]():            "Unit",
	reflect.TypeFor[nvml.VgpuInstance]():    "VgpuInstance",
	reflect.TypeFor[nvml.VgpuTypeId]():      "VgpuTypeId",
	reflect.TypeFor[nvml.GpmSample]():       "GpmSample",
}

// fillForwarders sets every nil library-level ...Func of the mock
// interface that mirrors a handle method to call that method, as go-nvml's
// real library does, so both call styles behave the same.
func fillForwarders(mockPtr any) {
	v := reflect.ValueOf(mockPtr).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		ft := f.Type
		if ft.Kind() != reflect.Func || ft.NumIn() == 0 || !v.Field(i).IsNil() {
			continue
		}
		prefix, ok := handleTypes[ft.In(0)]
		name := strings.TrimSuffix(f.Name, "Func")
		if !ok || !strings.HasPrefix(name, prefix) {
			continue
		}
		method, ok := ft.In(0).MethodByName(strings.TrimPrefix(name, prefix))
		if !ok || !sameRest(ft, method.Type) {
			continue
		}
		mname := method.Name
		v.Field(i).Set(reflect.MakeFunc(ft, func(args []reflect.Value) []reflect.Value {
			if args[0].IsNil() {
				return stubFunc(ft, func() nvml.Return { return nvml.ERROR_INVALID_ARGUMENT })(nil)
			}
			m := args[0].MethodByName(mname)
			if ft.IsVariadic() {
				return m.CallSlice(args[1:])
			}
			return m.Call(args[1:])
		}))
	}
}

// sameRest reports whether lib (handle, args...) (results...) and method
// (args...) (results...) agree past the handle.
func sameRest(lib, method reflect.Type) bool {
	if lib.NumIn() != method.NumIn()+1 || lib.NumOut() != method.NumOut() || lib.IsVariadic() != method.IsVariadic() {
		return false
	}
	for i := range method.NumIn() {
		if lib.In(i+1) != method.In(i) {
			return false
		}
	}
	for i := range method.NumOut() {
		if lib.Out(i) != method.Out(i) {
			return false
		}
	}
	return true
}
