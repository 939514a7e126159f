package httpapi

import (
	"encoding"
	"encoding/json"
	"reflect"
	"sync"
	"time"
)

// What every JSON answer of the API holds, whichever route built it and
// whichever package's type it is (engine.DingStatus, fanout.User, a
// handler's map), made so in one place, normalize, on the way out:
//
//   - every time is UTC and whole milliseconds, RFC 3339: the store keeps
//     milliseconds, and a ledger event stamped with the clock's
//     nanoseconds beside a "created" in milliseconds reads as two
//     precisions;
//   - every list is a list: a nil slice is [] and a nil map {}, never
//     null (fields tagged omitempty are still left out when empty).
//
// Values whose type marshals itself (json.Marshaler,
// encoding.TextMarshaler: engine.ID, engine.Refusal) are left as they
// are, except time.Time, and so are byte slices (base64 strings in JSON).

// apiTime is t as the API shows it: UTC, truncated to the millisecond;
// the zero time stays zero.
func apiTime(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC().Truncate(time.Millisecond)
}

var (
	timeType          = reflect.TypeFor[time.Time]()
	jsonMarshalerType = reflect.TypeFor[json.Marshaler]()
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
)

// normalize returns a copy of v with every time through apiTime and every
// nil slice or map made empty. It never changes v, which may share
// memory with the engine's or the directory's state: what it changes, it
// copies. Only exported fields are visited: JSON sees no others, except
// the fields of a struct embedded under an unexported type, which stay as
// they are (no answer has one; embed exported types).
func normalize(v any) any {
	if v == nil {
		return nil
	}
	return normValue(reflect.ValueOf(v)).Interface()
}

// marshalsItself reports whether JSON encodes t by a method of its own.
func marshalsItself(t reflect.Type) bool {
	for _, m := range []reflect.Type{jsonMarshalerType, textMarshalerType} {
		if t.Implements(m) || reflect.PointerTo(t).Implements(m) {
			return true
		}
	}
	return false
}

// mayChange reports whether normValue can change a value of type t: it
// is or holds a time, a slice, a map, a pointer or an interface. It
// depends on the type only, so it is worked out once per type (normValue
// asks it for every element of every list it copies).
func mayChange(t reflect.Type) bool {
	if v, ok := mayChangeOf.Load(t); ok {
		return v.(bool)
	}
	v := typeMayChange(t)
	mayChangeOf.Store(t, v)
	return v
}

var mayChangeOf sync.Map // reflect.Type -> bool

func typeMayChange(t reflect.Type) bool {
	switch {
	case t == timeType:
		return true
	case t.Kind() == reflect.Pointer || t.Kind() == reflect.Interface:
		return true // to a time (*time.Time marshals itself), or a struct holding one
	case marshalsItself(t):
		return false
	}
	switch t.Kind() {
	case reflect.Map:
		return true
	case reflect.Slice:
		return t.Elem().Kind() != reflect.Uint8
	case reflect.Array:
		return mayChange(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if f := t.Field(i); f.IsExported() && mayChange(f.Type) {
				return true
			}
		}
	}
	return false
}

func normValue(v reflect.Value) reflect.Value {
	t := v.Type()
	if t == timeType {
		return reflect.ValueOf(apiTime(v.Interface().(time.Time)))
	}
	if !mayChange(t) {
		return v
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		p := reflect.New(t.Elem())
		p.Elem().Set(normValue(v.Elem()))
		return p
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		out := reflect.New(t).Elem()
		out.Set(normValue(v.Elem()))
		return out
	case reflect.Slice:
		switch {
		case v.IsNil():
			return reflect.MakeSlice(t, 0, 0)
		case !mayChange(t.Elem()):
			return v
		}
		n := v.Len()
		out := reflect.MakeSlice(t, n, n)
		for i := range n {
			out.Index(i).Set(normValue(v.Index(i)))
		}
		return out
	case reflect.Map:
		switch {
		case v.IsNil():
			return reflect.MakeMap(t)
		case !mayChange(t.Elem()):
			return v
		}
		out := reflect.MakeMapWithSize(t, v.Len())
		for it := v.MapRange(); it.Next(); {
			out.SetMapIndex(it.Key(), normValue(it.Value()))
		}
		return out
	case reflect.Array:
		out := reflect.New(t).Elem()
		for i := range v.Len() {
			out.Index(i).Set(normValue(v.Index(i)))
		}
		return out
	case reflect.Struct:
		out := reflect.New(t).Elem()
		out.Set(v)
		for i := range t.NumField() {
			if t.Field(i).IsExported() {
				out.Field(i).Set(normValue(v.Field(i)))
			}
		}
		return out
	}
	return v
}
