# Prometheus for the e2e cluster: the binary tests/cluster/build.sh builds from Go modules
# (Prometheus 3.16 with only the kubernetes service discovery: Debian's 2.42, which the
# loopback rollout tests run, is built without kubernetes_sd_configs). Static, alone in the
# image; configuration from a ConfigMap, data on an emptyDir.
FROM scratch
COPY prometheus /bin/prometheus
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
