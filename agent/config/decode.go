package config

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// decoder walks a YAML node tree alongside the Config struct, so that every
// problem can name its key and line, and so that one bad value does not hide
// the next.
type decoder struct {
	file     string // source file name; empty when the values come from a flag
	flag     string // the flag a value came from, when file is empty
	origin   map[string]string
	problems []Problem
}

func (d *decoder) where(n *yaml.Node) string {
	if d.flag != "" {
		return "flag " + d.flag
	}
	return fmt.Sprintf("%s:%d", d.file, n.Line)
}

func (d *decoder) add(where, key, msg string) {
	d.problems = append(d.problems, Problem{Where: where, Key: key, Msg: msg})
}

func (d *decoder) err() error {
	if len(d.problems) == 0 {
		return nil
	}
	return &Error{Problems: d.problems}
}

// value decodes n into v, the field at dotted key.
func (d *decoder) value(n *yaml.Node, v reflect.Value, key string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if v.Kind() == reflect.Struct {
		d.mapping(n, v, key)
		return
	}
	if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct {
		d.sequence(n, v, key)
		return
	}
	if v.Type() == reflect.TypeFor[time.Duration]() && n.Kind == yaml.ScalarNode && n.ShortTag() != "!!str" {
		// yaml reads a bare number as nanoseconds: never what a person meant.
		d.add(d.where(n), key, fmt.Sprintf("%s has no unit; write a duration such as 10s, 1m30s or 2h", describeNode(n)))
		return
	}
	fresh := reflect.New(v.Type())
	if err := n.Decode(fresh.Interface()); err != nil {
		d.add(d.where(n), key, fmt.Sprintf("%s is not %s", describeNode(n), describeType(v.Type())))
		return
	}
	v.Set(fresh.Elem())
	d.origin[key] = d.where(n)
}

func (d *decoder) mapping(n *yaml.Node, v reflect.Value, key string) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // "section:" with nothing under it keeps the defaults
	}
	if n.Kind != yaml.MappingNode {
		d.add(d.where(n), key, fmt.Sprintf("%s is not a mapping of keys (allowed keys: %s)", describeNode(n), strings.Join(fieldNames(v.Type()), ", ")))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		full := joinKey(key, k.Value)
		if seen[k.Value] {
			d.add(d.where(k), full, "set twice in the same mapping")
			continue
		}
		seen[k.Value] = true
		f, ok := fieldByName(v, k.Value)
		if !ok {
			d.add(d.where(k), full, unknownKeyMessage(key, k.Value, v.Type()))
			continue
		}
		d.value(val, f, full)
	}
}

// sequence decodes a list of sections (such as tunnels.openvpn), checking each
// entry's keys as strictly as any other section's.
func (d *decoder) sequence(n *yaml.Node, v reflect.Value, key string) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		v.Set(reflect.Zero(v.Type()))
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.add(d.where(n), key, fmt.Sprintf("%s is not a list of mappings (keys: %s)", describeNode(n), strings.Join(fieldNames(v.Type().Elem()), ", ")))
		return
	}
	list := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.mapping(item, list.Index(i), fmt.Sprintf("%s[%d]", key, i))
	}
	v.Set(list)
	d.origin[key] = d.where(n)
}

func joinKey(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

// yamlName is the key a struct field is written as.
func yamlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

func fieldNames(t reflect.Type) []string {
	var names []string
	for f := range t.Fields() {
		if f.IsExported() {
			names = append(names, yamlName(f))
		}
	}
	return names
}

func fieldByName(v reflect.Value, name string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		if f := t.Field(i); f.IsExported() && yamlName(f) == name {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// lookup returns the field at a dotted key such as "log.level".
func lookup(v reflect.Value, key string) (reflect.Value, bool) {
	for name := range strings.SplitSeq(key, ".") {
		if v.Kind() != reflect.Struct {
			return reflect.Value{}, false
		}
		f, ok := fieldByName(v, name)
		if !ok {
			return reflect.Value{}, false
		}
		v = f
	}
	return v, true
}

// allKeys lists every leaf key below t, dotted.
func allKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		k := joinKey(prefix, yamlName(f))
		if f.Type.Kind() == reflect.Struct {
			keys = append(keys, allKeys(f.Type, k)...)
		} else {
			keys = append(keys, k)
		}
	}
	return keys
}

// unknownKeyMessage says what is allowed instead of name, with a "did you
// mean" for a near miss in the same mapping or an exact leaf name elsewhere.
func unknownKeyMessage(parent, name string, t reflect.Type) string {
	allowed := fieldNames(t)
	best, bestDist := "", len(name)/3+2
	for _, a := range allowed {
		if dist := editDistance(name, a); dist < bestDist {
			best, bestDist = joinKey(parent, a), dist
		}
	}
	if best == "" {
		for _, k := range allKeys(reflect.TypeFor[Config](), "") {
			if k == name || strings.HasSuffix(k, "."+name) || strings.ReplaceAll(k, ".", "_") == name {
				best = k
				break
			}
		}
	}
	msg := "unknown key"
	if best != "" {
		msg += fmt.Sprintf("; did you mean %q?", best)
	}
	sort.Strings(allowed)
	return msg + " (allowed here: " + strings.Join(allowed, ", ") + ")"
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return strconv.Quote(n.Value)
	}
}

func describeType(t reflect.Type) string {
	switch t {
	case reflect.TypeFor[time.Duration]():
		return "a duration such as 10s, 1m30s or 2h"
	case reflect.TypeFor[ByteSize]():
		return "a size such as 512KiB, 64MiB or 1GiB"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint64:
		return "a whole number"
	case reflect.Slice:
		return "a list of " + strings.TrimPrefix(describeType(t.Elem()), "a ") + "s"
	}
	return t.String()
}

// Override sets the value at a dotted key (such as "log.level") from a
// command-line flag. A list key takes every value; any other key exactly one.
// Problems name the flag; call Validate after the last override.
func (c *Config) Override(flag, key string, values ...string) error {
	field, ok := lookup(structValue(c), key)
	if !ok {
		return fmt.Errorf("config: no key %q", key)
	}
	n := &yaml.Node{Kind: yaml.ScalarNode}
	if field.Kind() == reflect.Slice {
		n.Kind = yaml.SequenceNode
		for _, s := range values {
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: s})
		}
	} else if len(values) == 1 {
		n.Value = values[0]
	} else {
		return fmt.Errorf("config: %s takes one value, got %d", key, len(values))
	}
	d := decoder{flag: flag, origin: c.origin}
	d.value(n, field, key)
	return d.err()
}

func structValue(c *Config) reflect.Value { return reflect.ValueOf(c).Elem() }

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxProblem turns a YAML parse error into a problem that points at its line.
func syntaxProblem(file string, err error) Problem {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		return Problem{Where: file + ":" + m[1], Msg: "invalid YAML: " + m[2]}
	}
	return Problem{Where: file, Msg: "invalid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
}
