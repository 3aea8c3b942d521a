// Command coupon-health prints, for each object of a JSON object or List on stdin, the status
// that kstatus computes (the library GitOps tools such as Flux and kpt wait on) and the health
// that an Argo CD health check in Lua returns, one JSON line per object:
//
//	{"name":"sale","kstatus":"Current","kstatusMessage":"...","argocd":"Healthy","argocdMessage":"..."}
//
// Usage: coupon-health LUA_FILE < objects.json
//
// The Lua runs as Argo CD runs a health check configured in argocd-cm: the object in the
// global obj, only the package, base and table libraries open (no string library), a one
// second deadline, and the returned table's status checked against Argo CD's health codes.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// argoHealthCodes are the statuses Argo CD accepts from a health check; anything else it
// shows as Unknown.
var argoHealthCodes = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

type verdict struct {
	Name           string `json:"name"`
	Kstatus        string `json:"kstatus"`
	KstatusMessage string `json:"kstatusMessage"`
	Argocd         string `json:"argocd"`
	ArgocdMessage  string `json:"argocdMessage"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: coupon-health LUA_FILE < objects.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("reading the health check: %v", err)
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	objects, err := objectsOf(input)
	if err != nil {
		fail("decoding stdin: %v", err)
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	encoder := json.NewEncoder(out)
	for _, object := range objects {
		v, err := judge(object, string(script))
		if err != nil {
			fail("%s: %v", object.GetName(), err)
		}
		if err := encoder.Encode(v); err != nil {
			fail("writing: %v", err)
		}
	}
}

// objectsOf decodes one object, or the items of a List (what kubectl get -o json prints for
// several objects).
func objectsOf(input []byte) ([]*unstructured.Unstructured, error) {
	var object unstructured.Unstructured
	if err := object.UnmarshalJSON(input); err != nil {
		// A List decodes into UnstructuredList, not Unstructured.
		var list unstructured.UnstructuredList
		if listErr := list.UnmarshalJSON(input); listErr != nil {
			return nil, err
		}
		objects := make([]*unstructured.Unstructured, 0, len(list.Items))
		for i := range list.Items {
			objects = append(objects, &list.Items[i])
		}
		return objects, nil
	}
	if object.IsList() {
		list, err := object.ToList()
		if err != nil {
			return nil, err
		}
		objects := make([]*unstructured.Unstructured, 0, len(list.Items))
		for i := range list.Items {
			objects = append(objects, &list.Items[i])
		}
		return objects, nil
	}
	return []*unstructured.Unstructured{&object}, nil
}

func judge(object *unstructured.Unstructured, script string) (verdict, error) {
	computed, err := status.Compute(object)
	if err != nil {
		return verdict{}, fmt.Errorf("kstatus: %w", err)
	}
	health, message, err := argoHealth(object, script)
	if err != nil {
		return verdict{}, fmt.Errorf("argo cd health check: %w", err)
	}
	return verdict{
		Name:           object.GetName(),
		Kstatus:        computed.Status.String(),
		KstatusMessage: computed.Message,
		Argocd:         health,
		ArgocdMessage:  message,
	}, nil
}

// argoHealth runs the health check the way Argo CD runs one from argocd-cm.
func argoHealth(object *unstructured.Unstructured, script string) (string, string, error) {
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	for name, open := range map[string]lua.LGFunction{
		lua.LoadLibName: lua.OpenPackage,
		lua.BaseLibName: lua.OpenBase,
		lua.TabLibName:  lua.OpenTable,
	} {
		if err := state.CallByParam(lua.P{Fn: state.NewFunction(open), NRet: 0, Protect: true}, lua.LString(name)); err != nil {
			return "", "", err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	state.SetContext(ctx)
	state.SetGlobal("obj", toLua(state, object.Object))
	if err := state.DoString(script); err != nil {
		return "", "", err
	}
	returned, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the check returned %s, not a table", state.Get(-1).Type())
	}
	health := lua.LVAsString(returned.RawGetString("status"))
	message := lua.LVAsString(returned.RawGetString("message"))
	if !argoHealthCodes[health] {
		return "", "", fmt.Errorf("the check returned the status %q, which Argo CD shows as Unknown", health)
	}
	return health, message, nil
}

// toLua turns a decoded object into Lua values as Argo CD does: maps into tables keyed by
// string, lists into sequences, numbers (int64 or float64 in unstructured) into numbers.
func toLua(state *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case []interface{}:
		table := state.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case map[string]interface{}:
		table := state.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	default:
		return lua.LNil
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "coupon-health: "+format+"\n", args...)
	os.Exit(1)
}
