// End-to-end test helpers; see e2e_env.h.
#include "tests/e2e/e2e_env.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <boost/json.hpp>
#include <fmt/format.h>

#include "supervisor/client/process.h"

namespace fp::e2e {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

std::string Tail(const fs::path& path, size_t max_bytes) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  const std::string all = text.str();
  return all.size() > max_bytes ? all.substr(all.size() - max_bytes) : all;
}

}  // namespace

std::string FieldprintBinary() { return (fp::testing::BinaryDir() / "fieldprint").string(); }

std::vector<json::object> ReadJsonLog(const std::string& path) {
  std::vector<json::object> events;
  std::ifstream file(path);
  std::string line;
  while (std::getline(file, line)) {
    boost::system::error_code error;
    json::value value = json::parse(line, error);
    if (!error && value.is_object()) events.push_back(std::move(value.get_object()));
  }
  return events;
}

StatusOr<json::object> WaitForLogEvent(const std::string& path,
                                       const std::function<bool(const json::object&)>& match,
                                       std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    for (json::object& event : ReadJsonLog(path)) {
      if (match(event)) return std::move(event);
    }
    if (Clock::now() >= deadline) {
      return DeadlineExceededError(
          fmt::format("no such event in {} after {} ms", path, timeout.count()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool IsEvent(const json::object& event, std::string_view message,
             std::initializer_list<std::pair<std::string_view, int64_t>> fields) {
  const json::value* msg = event.if_contains("msg");
  if (msg == nullptr || !msg->is_string() || msg->get_string() != message) return false;
  for (const auto& [key, value] : fields) {
    const json::value* field = event.if_contains(key);
    if (field == nullptr || !field->is_number()) return false;
    boost::system::error_code error;
    const int64_t actual = field->to_number<int64_t>(error);
    if (error || actual != value) return false;
  }
  return true;
}

StatusOr<double> MetricValue(const std::string& text, std::string_view name_and_labels) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.size() > name_and_labels.size() && line.starts_with(name_and_labels) &&
        line[name_and_labels.size()] == ' ') {
      return std::stod(line.substr(name_and_labels.size() + 1));
    }
  }
  return NotFoundError(fmt::format("no sample {}", name_and_labels));
}

client::SubmitRequest TinyRequest(std::string_view prompt, uint32_t max_tokens) {
  client::SubmitRequest request;
  request.model = client::kLocalModelName;
  request.prompt_token_ids = client::BytePromptTokens(prompt);
  request.max_tokens = max_tokens;
  return request;
}

StatusOr<std::string> RunToCompletion(const std::vector<std::string>& command,
                                      const std::string& dir, std::chrono::milliseconds timeout) {
  static int counter = 0;
  const std::string name = fmt::format("run-{}", counter++);
  client::ProcessOptions options;
  options.argv = command;
  options.stdout_path = (fs::path(dir) / (name + ".out")).string();
  options.stderr_path = (fs::path(dir) / (name + ".err")).string();
  FP_ASSIGN_OR_RETURN(auto child, client::ChildProcess::Spawn(name, options));
  StatusOr<int> status = child->WaitExit(timeout);
  if (!status.ok()) {
    child->Stop(std::chrono::seconds(5));
    return status.status();
  }
  const std::string out = Tail(options.stdout_path, client::kMaxChildOutputBytes);
  if (*status != 0) {
    return InternalError(fmt::format("{} {}\nstdout:\n{}\nstderr:\n{}", command[1],
                                     client::DescribeWaitStatus(*status), out,
                                     child->StderrTail(8192)));
  }
  return out;
}

client::LocalClusterOptions ClusterFixture::Options() const {
  client::LocalClusterOptions options;
  options.binary = FieldprintBinary();
  options.dir = dir_.Join("cluster");
  options.log_format = "json";
  options.log_level = "info";
  options.start_timeout = std::chrono::seconds(30);
  options.stop_grace = std::chrono::seconds(10);
  return options;
}

Status ClusterFixture::StartCluster(const client::LocalClusterOptions& options) {
  FP_ASSIGN_OR_RETURN(cluster_, client::LocalCluster::Start(options, {}));
  return OkStatus();
}

client::ApiClient ClusterFixture::Api() const {
  return client::ApiClient(client::SupervisorUrl{"127.0.0.1", cluster_->http_port()});
}

void ClusterFixture::TearDown() {
  if (cluster_ != nullptr) {
    for (const std::string& line : cluster_->Stop())
      std::fprintf(stderr, "stopped %s\n", line.c_str());
  }
  if (!HasFailure()) return;
  const fs::path logs = fs::path(dir_.Join("cluster")) / "logs";
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(logs, error)) {
    std::fprintf(stderr, "==== %s (tail)\n%s\n", entry.path().c_str(),
                 Tail(entry.path(), 6000).c_str());
  }
}

}  // namespace fp::e2e
