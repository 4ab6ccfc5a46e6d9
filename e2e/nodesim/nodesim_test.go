package nodesim

import (
	"errors"
	"math"
	"net"
	"net/netip"
	"reflect"
	"testing"
	"time"

	cnitypes "github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestCapabilityArgs(t *testing.T) {
	tests := []struct {
		name    string
		ann     map[string]string
		wantBW  map[string]uint64
		wantErr bool
	}{
		{"none", map[string]string{"a": "b"}, nil, false},
		{"ingress only", map[string]string{"kubernetes.io/ingress-bandwidth": "10M"}, map[string]uint64{"ingressRate": 10_000_000, "ingressBurst": math.MaxUint32}, false},
		{
			"both",
			map[string]string{"kubernetes.io/ingress-bandwidth": "1G", "kubernetes.io/egress-bandwidth": "500k"},
			map[string]uint64{"ingressRate": 1_000_000_000, "ingressBurst": math.MaxUint32, "egressRate": 500_000, "egressBurst": math.MaxUint32},
			false,
		},
		{"too small", map[string]string{"kubernetes.io/egress-bandwidth": "10"}, nil, true},
		{"not a quantity", map[string]string{"kubernetes.io/egress-bandwidth": "fast"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caps, err := capabilityArgs(tt.ann)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if !reflect.DeepEqual(caps[podAnnotationsCapability], tt.ann) {
				t.Errorf("pod annotations capability = %v", caps[podAnnotationsCapability])
			}
			bw, _ := caps["bandwidth"].(map[string]uint64)
			if !reflect.DeepEqual(bw, tt.wantBW) {
				t.Errorf("bandwidth = %v, want %v", bw, tt.wantBW)
			}
		})
	}
}

func TestRunningStatus(t *testing.T) {
	now := metav1.NewTime(time.Unix(1000, 0))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "n", UID: "u"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "init", Image: "i"}},
			Containers:     []corev1.Container{{Name: "a", Image: "x"}, {Name: "b", Image: "y"}},
		},
		Status: corev1.PodStatus{
			Phase:      corev1.PodPending,
			Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}},
		},
	}
	ips := []netip.Addr{netip.MustParseAddr("10.201.5.3")}
	st := runningStatus(pod, ips, netip.MustParseAddr("10.201.0.20"), "simabc", now)
	if st.Phase != corev1.PodRunning || st.PodIP != "10.201.5.3" || st.HostIP != "10.201.0.20" || len(st.PodIPs) != 1 {
		t.Errorf("status = %+v", st)
	}
	if st.StartTime == nil || !st.StartTime.Equal(&now) {
		t.Errorf("start time = %v", st.StartTime)
	}
	conds := map[corev1.PodConditionType]corev1.ConditionStatus{}
	for _, c := range st.Conditions {
		conds[c.Type] = c.Status
	}
	for _, ct := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		if conds[ct] != corev1.ConditionTrue {
			t.Errorf("condition %s = %q", ct, conds[ct])
		}
	}
	if len(st.Conditions) != 5 {
		t.Errorf("%d conditions, want 5 (no duplicates)", len(st.Conditions))
	}
	if len(st.ContainerStatuses) != 2 || st.ContainerStatuses[1].Name != "b" || st.ContainerStatuses[1].State.Running == nil || !st.ContainerStatuses[1].Ready {
		t.Errorf("container statuses = %+v", st.ContainerStatuses)
	}
	if len(st.InitContainerStatuses) != 1 || st.InitContainerStatuses[0].State.Terminated == nil {
		t.Errorf("init container statuses = %+v", st.InitContainerStatuses)
	}
	if pod.Status.Phase != corev1.PodPending {
		t.Error("runningStatus changed the pod it was given")
	}
	pod.Status = st
	if !reportedRunning(pod, ips) {
		t.Error("a pod with that status is not seen as reported")
	}
	if reportedRunning(pod, []netip.Addr{netip.MustParseAddr("10.201.5.4")}) {
		t.Error("a pod reported with another IP is seen as reported")
	}
}

func TestResultIPs(t *testing.T) {
	r := &types100.Result{
		Interfaces: []*types100.Interface{{Name: "cni0"}, {Name: "veth1"}, {Name: "eth0", Sandbox: "/ns"}},
		IPs: []*types100.IPConfig{
			{Interface: ptr.To(2), Address: net.IPNet{IP: net.ParseIP("10.201.5.3"), Mask: net.CIDRMask(16, 32)}},
			{Interface: ptr.To(0), Address: net.IPNet{IP: net.ParseIP("10.201.0.1"), Mask: net.CIDRMask(16, 32)}},
			{Address: net.IPNet{IP: net.ParseIP("fd00::3"), Mask: net.CIDRMask(64, 128)}},
		},
	}
	got := resultIPs(r, "eth0")
	want := []netip.Addr{netip.MustParseAddr("10.201.5.3"), netip.MustParseAddr("fd00::3")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("resultIPs = %v, want %v", got, want)
	}
}

func TestPluginError(t *testing.T) {
	exit := errors.New("exit status 1")
	tests := []struct {
		name           string
		stdout, stderr string
		wantCode       uint
		wantMsg        string
	}{
		{"CNI error", `{"cniVersion":"1.0.0","code":7,"msg":"bad config"}`, "", 7, "bad config"},
		{"garbage on stdout", "oops", "", 0, `plugin failed (exit status 1) and printed no CNI error: "oops"`},
		{"stderr only", "", "panic", 0, `plugin failed (exit status 1): "panic"`},
		{"nothing", "", "", 0, "plugin failed with no message: exit status 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e *cnitypes.Error
			if !errors.As(pluginError(exit, []byte(tt.stdout), []byte(tt.stderr)), &e) {
				t.Fatal("not a CNI error")
			}
			if e.Code != tt.wantCode || e.Msg != tt.wantMsg {
				t.Errorf("error = %d %q, want %d %q", e.Code, e.Msg, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestNodeObject(t *testing.T) {
	n := Node{Name: "sim-7", IP: netip.MustParseAddr("10.201.0.30"), Labels: map[string]string{"e2e.stickynet.io/simulated": "true"}}
	obj := nodeObject(n, corev1.ResourceList{}, metav1.Now())
	if obj.Labels[corev1.LabelHostname] != "sim-7" || obj.Labels["e2e.stickynet.io/simulated"] != "true" {
		t.Errorf("labels = %v", obj.Labels)
	}
	if len(obj.Spec.Taints) != 0 {
		t.Errorf("taints = %v", obj.Spec.Taints)
	}
	ready := false
	for _, c := range obj.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	if !ready || obj.Status.Addresses[0].Address != "10.201.0.30" || obj.Status.Addresses[0].Type != corev1.NodeInternalIP {
		t.Errorf("status = %+v", obj.Status)
	}
}

func TestRepostStatusKeepsOthersResources(t *testing.T) {
	vf := corev1.ResourceName("stickynet.io/sriov-fast")
	capacity := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("16")}
	stored := nodeObject(Node{Name: "sim-1"}, capacity, metav1.Now()).Status
	stored.Capacity[vf] = resource.MustParse("2")
	stored.Allocatable[vf] = resource.MustParse("1")
	stored.Capacity[corev1.ResourceCPU] = resource.MustParse("1")

	got := repostStatus(stored, nodeObject(Node{Name: "sim-1"}, capacity, metav1.Now()).Status)
	if q := got.Capacity[vf]; q.Value() != 2 {
		t.Errorf("capacity of %s = %s, want the stored 2", vf, q.String())
	}
	if q := got.Allocatable[vf]; q.Value() != 1 {
		t.Errorf("allocatable of %s = %s, want the stored 1", vf, q.String())
	}
	if q := got.Capacity[corev1.ResourceCPU]; q.Value() != 16 {
		t.Errorf("cpu capacity = %s, want the simulator's own 16", q.String())
	}
	if _, leaked := capacity[vf]; leaked {
		t.Error("the simulator's capacity list was changed")
	}
}
