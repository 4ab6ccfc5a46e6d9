package nodesim

import (
	"fmt"
	"math"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Annotations containerd reads for the bandwidth capability.
const (
	ingressBandwidthAnnotation = "kubernetes.io/ingress-bandwidth"
	egressBandwidthAnnotation  = "kubernetes.io/egress-bandwidth"
	podAnnotationsCapability   = "io.kubernetes.cri.pod-annotations"
)

// cniArgs are the CNI_ARGS a CRI runtime passes for a pod sandbox.
func cniArgs(pod *corev1.Pod, containerID string) [][2]string {
	return [][2]string{
		{"IgnoreUnknown", "1"},
		{"K8S_POD_NAMESPACE", pod.Namespace},
		{"K8S_POD_NAME", pod.Name},
		{"K8S_POD_INFRA_CONTAINER_ID", containerID},
		{"K8S_POD_UID", string(pod.UID)},
	}
}

// capabilityArgs are the runtimeConfig values containerd offers plugins:
// the pod's annotations always, and the bandwidth limits of the
// kubernetes.io/*-bandwidth annotations (burst left unlimited, as
// containerd does).
func capabilityArgs(annotations map[string]string) (map[string]any, error) {
	caps := map[string]any{podAnnotationsCapability: annotations}
	bw := map[string]uint64{}
	for key, field := range map[string]string{ingressBandwidthAnnotation: "ingress", egressBandwidthAnnotation: "egress"} {
		v, ok := annotations[key]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return nil, fmt.Errorf("annotation %s=%q: %w", key, v, err)
		}
		if q.Value() < 1000 || q.Cmp(resource.MustParse("1P")) > 0 {
			return nil, fmt.Errorf("annotation %s=%q: want 1k to 1P bit/s", key, v)
		}
		bw[field+"Rate"] = uint64(q.Value())
		bw[field+"Burst"] = math.MaxUint32
	}
	if len(bw) > 0 {
		caps["bandwidth"] = bw
	}
	return caps, nil
}

// runningStatus returns the status a kubelet reports for pod once its
// sandbox has the addresses ips and every container runs: phase Running,
// the pod and host IPs, all conditions true, a running state per container.
func runningStatus(pod *corev1.Pod, ips []netip.Addr, nodeIP netip.Addr, containerID string, now metav1.Time) corev1.PodStatus {
	st := *pod.Status.DeepCopy()
	st.Phase = corev1.PodRunning
	st.HostIP = nodeIP.String()
	st.HostIPs = []corev1.HostIP{{IP: nodeIP.String()}}
	st.PodIPs = nil
	for _, ip := range ips {
		st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	st.PodIP = ""
	if len(ips) > 0 {
		st.PodIP = ips[0].String()
	}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	for _, t := range []corev1.PodConditionType{
		corev1.PodScheduled, corev1.PodReadyToStartContainers, corev1.PodInitialized,
		corev1.ContainersReady, corev1.PodReady,
	} {
		setCondition(&st, t, now)
	}
	started := true
	st.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name:         c.Name,
			Image:        c.Image,
			ImageID:      "sim://" + c.Image,
			ContainerID:  "sim://" + containerID + "-" + c.Name,
			Ready:        true,
			Started:      &started,
			State:        corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			RestartCount: 0,
		})
	}
	st.InitContainerStatuses = nil
	for _, c := range pod.Spec.InitContainers {
		st.InitContainerStatuses = append(st.InitContainerStatuses, corev1.ContainerStatus{
			Name:        c.Name,
			Image:       c.Image,
			ImageID:     "sim://" + c.Image,
			ContainerID: "sim://" + containerID + "-" + c.Name,
			Ready:       true,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now,
			}},
		})
	}
	return st
}

func setCondition(st *corev1.PodStatus, t corev1.PodConditionType, now metav1.Time) {
	for i := range st.Conditions {
		if st.Conditions[i].Type == t {
			if st.Conditions[i].Status != corev1.ConditionTrue {
				st.Conditions[i].Status = corev1.ConditionTrue
				st.Conditions[i].LastTransitionTime = now
				st.Conditions[i].Reason, st.Conditions[i].Message = "", ""
			}
			return
		}
	}
	st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
}

// reportedRunning reports whether pod's status already says what
// runningStatus would (so no update is needed).
func reportedRunning(pod *corev1.Pod, ips []netip.Addr) bool {
	if pod.Status.Phase != corev1.PodRunning || len(pod.Status.PodIPs) != len(ips) {
		return false
	}
	for i, ip := range ips {
		if pod.Status.PodIPs[i].IP != ip.String() {
			return false
		}
	}
	return true
}

// nodeObject returns the Node a simulated node registers: Ready, with the
// given capacity and address, and the labels a kubelet sets.
func nodeObject(n Node, capacity corev1.ResourceList, now metav1.Time) *corev1.Node {
	labels := map[string]string{
		corev1.LabelHostname:   n.Name,
		corev1.LabelOSStable:   "linux",
		corev1.LabelArchStable: "amd64",
	}
	for k, v := range n.Labels {
		labels[k] = v
	}
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels},
		Status: corev1.NodeStatus{
			Capacity:    capacity.DeepCopy(),
			Allocatable: capacity.DeepCopy(),
			Phase:       corev1.NodeRunning,
			Conditions: []corev1.NodeCondition{
				cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"),
				cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"),
				cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"),
				cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"),
			},
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: n.IP.String()},
				{Type: corev1.NodeHostName, Address: n.Name},
			},
			NodeInfo: corev1.NodeSystemInfo{
				OperatingSystem: "linux", Architecture: "amd64",
				KubeletVersion: "v1.37.2-sim", ContainerRuntimeVersion: "sim://1",
			},
		},
	}
}
